//! `model-router bench --capacity` end to end, on a short load: cooldown-only dispatch meets the
//! provisioned mock's 429s, capacity-aware dispatch whose declared `capacity_tpm` matches the
//! mock's limit meets none, and every scenario serves every request. Latencies are reported,
//! never asserted (this machine is shared).

mod common;

use common::ok;
use serde_json::Value;

fn scenario<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["scenarios"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["scenario"] == name))
        .unwrap_or_else(|| panic!("no scenario {name}: {report}"))
}

#[test]
fn capacity_aware_dispatch_meets_no_429_where_cooldown_only_does() {
    let report = ok(&["bench", "--capacity", "--capacity-seconds", "12", "--json"]).json();
    let requests = report["requests_per_scenario"].as_u64().unwrap();
    assert!(requests > 100, "{report}");
    for row in report["scenarios"].as_array().unwrap() {
        assert_eq!(row["served"].as_u64(), Some(requests), "{row}");
        assert_eq!(row["errors"], 0, "{row}");
        assert!(
            row["spilled"].as_u64().unwrap() > 0,
            "the bursts must spill: {row}"
        );
    }
    let cooldown_only = scenario(&report, "cooldown-only");
    assert!(cooldown_only["met_429"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        cooldown_only["met_429"], cooldown_only["mock_429s"],
        "{report}"
    );
    for name in ["capacity: declared tpm", "capacity: tpm + headers"] {
        let row = scenario(&report, name);
        assert_eq!(row["met_429"], 0, "{row}");
        assert_eq!(row["mock_429s"], 0, "{row}");
        // The provisioned deployment keeps most of its share: the estimate errs high only a little.
        let share = row["provisioned_share"].as_f64().unwrap();
        let baseline = cooldown_only["provisioned_share"].as_f64().unwrap();
        assert!(
            share > baseline - 0.10,
            "{name}: {share} against {baseline}"
        );
    }
}
