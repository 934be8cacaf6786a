//! One store test suite, run against both backends: an SQLite file in a temporary directory,
//! and a fresh database on the PostgreSQL server named by `MODEL_ROUTER_TEST_PG_URL` (crate
//! feature `postgres`; `.ci/run` starts a throwaway cluster). The cap (refuse and evict),
//! filters, order and `after` pagination, owners, metadata updates, deletes, messages, the
//! export, shadows, schema versions and two stores sharing one database.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod place;

use std::collections::BTreeMap;

use place::Place;
use router_store::{
    owner_of_key, ExportFilter, ListQuery, MessageQuery, Metadata, NewCompletion, OnFull, Order,
    Store, StoreError, StoreOptions, Synchronous, ANONYMOUS_OWNER, ROUTER_OWNER,
};
use serde_json::{json, Map, Value};
use tempfile::TempDir;

/// Each listed test function takes a [`Place`] and runs once per backend: `sqlite::NAME` and
/// `postgres::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::Place::sqlite()) })+
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(#[test] fn $name() {
                if let Some(place) = super::Place::postgres() { super::$name(place) }
            })+
        }
    };
}

on_both_backends!(
    stores_and_reads_back_every_field,
    owners_see_only_their_records,
    taken_or_missing_ids_get_fresh_ones,
    cap_refuses_when_full,
    cap_evicts_the_oldest,
    filters_by_model_and_every_metadata_pair,
    pages_in_both_orders_with_after,
    messages_mirror_openai_and_page,
    metadata_update_replaces_and_is_filterable,
    export_writes_fine_tuning_lines_and_counts_skips,
    anonymous_owner_and_concurrent_writers,
    shadows_link_to_their_original_and_stay_out_of_lists,
    a_newer_schema_is_refused,
    two_stores_on_one_database_share_the_cap,
    usage_rows_sum_per_key_and_prune_by_minute,
);

fn request(prompt: &str) -> Map<String, Value> {
    json!({"model": "model-router", "temperature": 0.2,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]})
    .as_object()
    .cloned()
    .unwrap()
}

fn response(id: &str, answer: Value) -> Value {
    json!({"id": id, "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}})
}

/// A record `id` by `owner`, created at `t` ms, answered by `model`, with metadata pairs.
fn record(id: &str, owner: &str, t: i64, model: &str, meta: &[(&str, &str)]) -> NewCompletion {
    let mut r = NewCompletion::new(
        owner,
        request(&format!("prompt {id}")),
        response(id, json!(format!("answer {id}"))),
    );
    r.created_at_ms = t;
    r.model = model.into();
    r.deployment = "dep".into();
    r.metadata = Metadata::new(
        meta.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    )
    .unwrap();
    r
}

fn ids(page: &router_store::Page<router_store::Completion>) -> Vec<String> {
    page.data.iter().map(|c| c.id.clone()).collect()
}

fn stores_and_reads_back_every_field(place: Place) {
    let store = place.open(1 << 20, OnFull::Refuse);
    let mut r = record("chatcmpl-a", "o", 1000, "small", &[("task", "math")]);
    r.decision = Some(json!({"model": "small", "mode": "balanced"}));
    r.cost_usd = 0.0125;
    r.latency_ms = 42;
    let inserted = store.insert(r).unwrap();
    assert_eq!(inserted.id, "chatcmpl-a");
    assert_eq!(inserted.evicted, 0);
    drop(store);
    // Reopened from the file: everything is there.
    let store = place.open(1 << 20, OnFull::Refuse);
    let c = store.get(Some("o"), "chatcmpl-a").unwrap().expect("stored");
    assert_eq!(c.owner, "o");
    assert_eq!(c.created_at_ms, 1000);
    assert_eq!(c.model, "small");
    assert_eq!(c.deployment, "dep");
    assert_eq!(c.messages.len(), 2);
    assert_eq!(c.request.get("temperature"), Some(&json!(0.2)));
    assert!(!c.request.contains_key("messages"));
    assert_eq!(
        c.response["choices"][0]["message"]["content"],
        "answer chatcmpl-a"
    );
    assert_eq!(
        c.decision,
        Some(json!({"model": "small", "mode": "balanced"}))
    );
    assert_eq!(
        c.usage
            .map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens)),
        Some((7, 2, 9))
    );
    assert_eq!(c.cost_usd, 0.0125);
    assert_eq!(c.latency_ms, 42);
    assert_eq!(c.metadata.get("task"), Some("math"));
    assert_eq!(c.bytes, inserted.bytes);
    let openai = c.to_openai();
    assert_eq!(openai["id"], "chatcmpl-a");
    assert_eq!(openai["metadata"], json!({"task": "math"}));
    assert_eq!(openai["router"]["deployment"], "dep");
    let stats = store.stats().unwrap();
    assert_eq!((stats.records, stats.used_bytes), (1, inserted.bytes));
    assert!(stats.file_bytes > 0);
}

fn owners_see_only_their_records(place: Place) {
    let store = place.open(1 << 20, OnFull::Refuse);
    let a = owner_of_key("key-a");
    let b = owner_of_key("key-b");
    assert_ne!(a, b);
    store.insert(record("x", &a, 1, "m", &[])).unwrap();
    assert!(store.get(Some(&b), "x").unwrap().is_none());
    assert!(store.get(Some(&a), "x").unwrap().is_some());
    assert!(store.get(None, "x").unwrap().is_some());
    assert!(store
        .list(&ListQuery {
            owner: Some(b.clone()),
            ..ListQuery::default()
        })
        .unwrap()
        .data
        .is_empty());
    assert!(store
        .update_metadata(Some(&b), "x", &Metadata::default())
        .unwrap()
        .is_none());
    assert!(!store.delete(Some(&b), "x").unwrap());
    assert!(store
        .messages(Some(&b), "x", &MessageQuery::default())
        .unwrap()
        .is_none());
    // b cannot use a's record as a cursor either.
    let e = store
        .list(&ListQuery {
            owner: Some(b),
            after: Some("x".into()),
            ..ListQuery::default()
        })
        .unwrap_err();
    assert!(
        matches!(e, StoreError::InvalidQuery { param: "after", .. }),
        "{e}"
    );
    assert!(store.delete(Some(&a), "x").unwrap());
    assert!(store.get(None, "x").unwrap().is_none());
}

fn taken_or_missing_ids_get_fresh_ones(place: Place) {
    let store = place.open(1 << 20, OnFull::Refuse);
    let first = store
        .insert(record("chatcmpl-1", "o", 1, "m", &[]))
        .unwrap();
    let second = store
        .insert(record("chatcmpl-1", "o", 2, "m", &[]))
        .unwrap();
    assert_eq!(first.id, "chatcmpl-1");
    assert_ne!(second.id, "chatcmpl-1");
    assert!(
        second.id.starts_with("chatcmpl-") && second.id.len() == 9 + 24,
        "{}",
        second.id
    );
    let c = store.get(None, &second.id).unwrap().unwrap();
    assert_eq!(
        c.response["id"],
        second.id.as_str(),
        "the stored response carries the stored id"
    );
    let mut r = record("", "o", 3, "m", &[]);
    r.id = None;
    assert!(store.insert(r).unwrap().id.starts_with("chatcmpl-"));
    // A request without messages is not a chat completion.
    let mut r = record("q", "o", 4, "m", &[]);
    r.request.remove("messages");
    assert!(matches!(store.insert(r), Err(StoreError::InvalidRecord(_))));
}

fn cap_refuses_when_full(place: Place) {
    // Measure one record, then cap the store at exactly three of them.
    let probe = place.open(1 << 20, OnFull::Refuse);
    let size = probe.insert(record("r0", "o", 0, "m", &[])).unwrap().bytes;
    assert!(probe.delete(None, "r0").unwrap());
    assert_eq!(
        probe.stats().unwrap().used_bytes,
        0,
        "a delete gives its bytes back"
    );
    drop(probe);
    let store = place.open(3 * size, OnFull::Refuse);
    for i in 1..=3 {
        store
            .insert(record(&format!("r{i}"), "o", i, "m", &[]))
            .unwrap();
    }
    assert_eq!(
        store.stats().unwrap().used_bytes,
        3 * size,
        "exactly at the cap is allowed"
    );
    let e = store.insert(record("r4", "o", 4, "m", &[])).unwrap_err();
    assert!(e.is_full(), "{e}");
    assert!(e.to_string().contains("store full"), "{e}");
    assert!(store.get(None, "r4").unwrap().is_none());
    assert_eq!(store.stats().unwrap().records, 3, "nothing was evicted");
    // Deleting makes room again.
    assert!(store.delete(None, "r1").unwrap());
    store.insert(record("r4", "o", 4, "m", &[])).unwrap();
    // A record larger than the whole store.
    let mut big = record("big", "o", 5, "m", &[]);
    big.response = response("big", json!("x".repeat(4 * size as usize)));
    assert!(matches!(
        store.insert(big),
        Err(StoreError::TooLarge { .. })
    ));
    // Metadata updates count too.
    let meta = Metadata::from_json(&json!({"note": "n".repeat(512)})).unwrap();
    assert!(store
        .update_metadata(None, "r2", &meta)
        .unwrap_err()
        .is_full());
    assert!(store.get(None, "r2").unwrap().unwrap().metadata.is_empty());
}

fn cap_evicts_the_oldest(place: Place) {
    let probe = place.open(1 << 20, OnFull::Refuse);
    let size = probe.insert(record("r0", "o", 0, "m", &[])).unwrap().bytes;
    assert!(probe.delete(None, "r0").unwrap());
    drop(probe);
    let store = place.open(3 * size, OnFull::EvictOldest);
    // Created out of insertion order: r2 is the oldest by time.
    store.insert(record("r1", "a", 20, "m", &[])).unwrap();
    store.insert(record("r2", "b", 10, "m", &[])).unwrap();
    store.insert(record("r3", "a", 30, "m", &[])).unwrap();
    let r4 = store.insert(record("r4", "a", 40, "m", &[])).unwrap();
    assert_eq!(r4.evicted, 1);
    assert!(
        store.get(None, "r2").unwrap().is_none(),
        "the oldest (of any owner) went"
    );
    let r5 = store.insert(record("r5", "a", 50, "m", &[])).unwrap();
    assert_eq!(r5.evicted, 1);
    assert!(store.get(None, "r1").unwrap().is_none());
    let left = store.list(&ListQuery::default()).unwrap();
    assert_eq!(ids(&left), ["r3", "r4", "r5"]);
    let stats = store.stats().unwrap();
    assert_eq!((stats.records, stats.used_bytes), (3, 3 * size));
    // A record twice the size of one evicts two.
    let mut double = record("r6", "a", 60, "m", &[]);
    double.response = response("r6", json!("x".repeat(size as usize - 20)));
    let r6 = store.insert(double).unwrap();
    assert!(
        r6.bytes > size && r6.bytes <= 2 * size,
        "{} vs {size}",
        r6.bytes
    );
    assert_eq!(r6.evicted, 2);
    assert_eq!(
        ids(&store.list(&ListQuery::default()).unwrap()),
        ["r5", "r6"]
    );
    assert!(store.stats().unwrap().used_bytes <= 3 * size);
    // The evicted records' metadata rows went with them.
    store
        .update_metadata(
            None,
            "r5",
            &Metadata::from_json(&json!({"k": "v"})).unwrap(),
        )
        .unwrap();
    let mut bigger = record("r7", "a", 70, "m", &[("k", "w")]);
    bigger.response = response("r7", json!("x".repeat(size as usize)));
    assert_eq!(store.insert(bigger).unwrap().evicted, 2);
    assert_eq!(place.metadata_values(), ["w"]);
}

fn filters_by_model_and_every_metadata_pair(place: Place) {
    let store = place.open(1 << 20, OnFull::Refuse);
    store
        .insert(record(
            "a",
            "o",
            1,
            "small",
            &[("task", "math"), ("user", "1")],
        ))
        .unwrap();
    store
        .insert(record(
            "b",
            "o",
            2,
            "large",
            &[("task", "math"), ("user", "2")],
        ))
        .unwrap();
    store
        .insert(record(
            "c",
            "o",
            3,
            "small",
            &[("task", "code"), ("user", "1")],
        ))
        .unwrap();
    store
        .insert(record(
            "d",
            "other",
            4,
            "small",
            &[("task", "math"), ("user", "1")],
        ))
        .unwrap();
    let q = |model: Option<&str>, meta: &[(&str, &str)]| {
        ids(&store
            .list(&ListQuery {
                owner: Some("o".into()),
                model: model.map(str::to_string),
                metadata: meta
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..ListQuery::default()
            })
            .unwrap())
    };
    assert_eq!(q(None, &[]), ["a", "b", "c"]);
    assert_eq!(q(Some("small"), &[]), ["a", "c"]);
    assert_eq!(q(None, &[("task", "math")]), ["a", "b"]);
    assert_eq!(q(None, &[("task", "math"), ("user", "1")]), ["a"]);
    assert_eq!(q(Some("large"), &[("user", "1")]), Vec::<String>::new());
    assert_eq!(
        q(None, &[("task", "Math")]),
        Vec::<String>::new(),
        "values match exactly"
    );
    assert_eq!(q(None, &[("missing", "x")]), Vec::<String>::new());
}

fn pages_in_both_orders_with_after(place: Place) {
    let store = place.open(1 << 20, OnFull::Refuse);
    // Five records, two created in the same millisecond: insertion order breaks the tie.
    for (id, t) in [("e", 50), ("a", 10), ("c", 30), ("b", 30), ("d", 40)] {
        store.insert(record(id, "o", t, "m", &[])).unwrap();
    }
    let page = |after: Option<&str>, limit: usize, order: Order| {
        store
            .list(&ListQuery {
                owner: Some("o".into()),
                after: after.map(str::to_string),
                limit: Some(limit),
                order,
                ..ListQuery::default()
            })
            .unwrap()
    };
    let p1 = page(None, 2, Order::Asc);
    assert_eq!(
        (ids(&p1), p1.has_more),
        (vec!["a".to_string(), "c".into()], true)
    );
    let p2 = page(Some("c"), 2, Order::Asc);
    assert_eq!(
        (ids(&p2), p2.has_more),
        (vec!["b".to_string(), "d".into()], true)
    );
    let p3 = page(Some("d"), 2, Order::Asc);
    assert_eq!((ids(&p3), p3.has_more), (vec!["e".to_string()], false));
    let p = page(None, 3, Order::Desc);
    assert_eq!(
        (ids(&p), p.has_more),
        (vec!["e".to_string(), "d".into(), "b".into()], true)
    );
    let p = page(Some("b"), 3, Order::Desc);
    assert_eq!(
        (ids(&p), p.has_more),
        (vec!["c".to_string(), "a".into()], false)
    );
    let p = page(None, 5, Order::Asc);
    assert!(!p.has_more, "exactly a full page has no more");
    // Default limit 20, range 1..=100.
    assert_eq!(store.list(&ListQuery::default()).unwrap().data.len(), 5);
    for bad in [0, 101] {
        let e = store
            .list(&ListQuery {
                limit: Some(bad),
                ..ListQuery::default()
            })
            .unwrap_err();
        assert!(
            matches!(e, StoreError::InvalidQuery { param: "limit", .. }),
            "{e}"
        );
    }
    assert!(matches!(
        store.list(&ListQuery {
            after: Some("nope".into()),
            ..ListQuery::default()
        }),
        Err(StoreError::InvalidQuery { param: "after", .. })
    ));
    assert!(matches!(
        "up".parse::<Order>(),
        Err(StoreError::InvalidQuery { param: "order", .. })
    ));
}

fn messages_mirror_openai_and_page(place: Place) {
    let store = place.open(1 << 20, OnFull::Refuse);
    let mut r = record("m1", "o", 1, "m", &[]);
    r.request.insert(
        "messages".into(),
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:x"}}]},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Sure?", "name": "bob"}
        ]),
    );
    store.insert(r).unwrap();
    let all = store
        .messages(Some("o"), "m1", &MessageQuery::default())
        .unwrap()
        .unwrap();
    assert!(!all.has_more);
    assert_eq!(all.data.len(), 4);
    assert_eq!(
        all.data[0],
        json!({"id": "m1-0", "role": "system", "content": "Be brief.", "name": null, "content_parts": null})
    );
    assert_eq!(all.data[1]["content"], "What is this?");
    assert_eq!(
        all.data[1]["content_parts"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(all.data[3]["name"], "bob");
    let q = |after: Option<&str>, limit: usize, order: Order| {
        let p = store
            .messages(
                Some("o"),
                "m1",
                &MessageQuery {
                    after: after.map(str::to_string),
                    limit: Some(limit),
                    order,
                },
            )
            .unwrap()
            .unwrap();
        (
            p.data
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>(),
            p.has_more,
        )
    };
    assert_eq!(
        q(None, 2, Order::Asc),
        (vec!["m1-0".to_string(), "m1-1".into()], true)
    );
    assert_eq!(
        q(Some("m1-1"), 2, Order::Asc),
        (vec!["m1-2".to_string(), "m1-3".into()], false)
    );
    assert_eq!(
        q(None, 3, Order::Desc),
        (vec!["m1-3".to_string(), "m1-2".into(), "m1-1".into()], true)
    );
    assert!(store
        .messages(Some("o"), "nope", &MessageQuery::default())
        .unwrap()
        .is_none());
    assert!(matches!(
        store.messages(
            Some("o"),
            "m1",
            &MessageQuery {
                after: Some("x".into()),
                ..MessageQuery::default()
            }
        ),
        Err(StoreError::InvalidQuery { param: "after", .. })
    ));
    let list = router_store::openai_list(all.data, false);
    assert_eq!(
        (
            list["object"].as_str(),
            list["first_id"].as_str(),
            list["last_id"].as_str()
        ),
        (Some("list"), Some("m1-0"), Some("m1-3"))
    );
}

fn metadata_update_replaces_and_is_filterable(place: Place) {
    let store = place.open(1 << 20, OnFull::Refuse);
    store
        .insert(record("u", "o", 1, "m", &[("a", "1"), ("b", "2")]))
        .unwrap();
    let before = store.stats().unwrap().used_bytes;
    let new = Metadata::from_json(&json!({"c": "three"})).unwrap();
    let c = store
        .update_metadata(Some("o"), "u", &new)
        .unwrap()
        .unwrap();
    assert_eq!(
        c.metadata.to_json(),
        json!({"c": "three"}),
        "replaced, not merged"
    );
    let after = store.stats().unwrap().used_bytes;
    assert_eq!(
        after as i64 - before as i64,
        ("cthree".len() as i64) - ("a1b2".len() as i64)
    );
    assert_eq!(c.bytes, after);
    let by = |k: &str, v: &str| {
        store
            .list(&ListQuery {
                metadata: vec![(k.into(), v.into())],
                ..ListQuery::default()
            })
            .unwrap()
            .data
            .len()
    };
    assert_eq!((by("a", "1"), by("c", "three")), (0, 1));
    assert!(store
        .update_metadata(Some("o"), "missing", &new)
        .unwrap()
        .is_none());
}

fn export_writes_fine_tuning_lines_and_counts_skips(place: Place) {
    let store = place.open(1 << 20, OnFull::Refuse);
    store
        .insert(record(
            "g9",
            "a",
            1,
            "small",
            &[("task", "x"), ("grade", "0.9")],
        ))
        .unwrap();
    store
        .insert(record(
            "g2",
            "b",
            2,
            "small",
            &[("task", "x"), ("grade", "0.2")],
        ))
        .unwrap();
    store
        .insert(record("none", "a", 3, "small", &[("task", "x")]))
        .unwrap();
    store
        .insert(record(
            "bad",
            "a",
            4,
            "small",
            &[("task", "x"), ("grade", "excellent")],
        ))
        .unwrap();
    store
        .insert(record(
            "other",
            "a",
            5,
            "small",
            &[("task", "y"), ("grade", "1")],
        ))
        .unwrap();
    store
        .insert(record(
            "large",
            "a",
            6,
            "large",
            &[("task", "x"), ("grade", "1")],
        ))
        .unwrap();
    let mut empty = record("empty", "a", 7, "small", &[("task", "x"), ("grade", "1")]);
    empty.response = response("empty", Value::Null);
    store.insert(empty).unwrap();
    let mut tools = record("tools", "a", 8, "small", &[("task", "x"), ("grade", "0.5")]);
    tools.response = json!({"id": "tools", "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
        "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]});
    store.insert(tools).unwrap();

    let export = |filter: ExportFilter| {
        let mut out = Vec::new();
        let summary = store.export(&filter, &mut out).unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (summary, lines)
    };
    let (s, lines) = export(ExportFilter {
        model: Some("small".into()),
        metadata: vec![("task".into(), "x".into())],
        min_grade: Some(0.5),
        ..ExportFilter::default()
    });
    assert_eq!(
        (s.written, s.no_grade, s.below_grade, s.no_answer),
        (2, 2, 1, 1)
    );
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "prompt g9"},
            {"role": "assistant", "content": "answer g9"}
        ]})
    );
    assert_eq!(
        lines[1]["messages"][2]["tool_calls"][0]["function"]["name"],
        "f"
    );
    assert!(lines[1]["messages"][2]["content"].is_null());
    // Without a minimum grade nothing is skipped for grades; every owner by default.
    let (s, lines) = export(ExportFilter {
        model: Some("small".into()),
        ..ExportFilter::default()
    });
    assert_eq!(
        (s.written, s.no_grade, s.below_grade, s.no_answer),
        (6, 0, 0, 1)
    );
    assert_eq!(lines.len(), 6);
    let (s, _) = export(ExportFilter {
        owner: Some("b".into()),
        ..ExportFilter::default()
    });
    assert_eq!(s.written, 1);
    let mut sink = Vec::new();
    assert!(matches!(
        store.export(
            &ExportFilter {
                min_grade: Some(1.5),
                ..ExportFilter::default()
            },
            &mut sink
        ),
        Err(StoreError::InvalidQuery {
            param: "min_grade",
            ..
        })
    ));
}

fn anonymous_owner_and_concurrent_writers(place: Place) {
    let store = std::sync::Arc::new(place.open(1 << 20, OnFull::Refuse));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    store
                        .insert(record(&format!("t{t}-{i}"), ANONYMOUS_OWNER, i, "m", &[]))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.stats().unwrap().records, 40);
    // A second connection (another process would do the same) sees every commit.
    let other = place.open(1 << 20, OnFull::Refuse);
    assert_eq!(
        other
            .list(&ListQuery {
                limit: Some(100),
                ..ListQuery::default()
            })
            .unwrap()
            .data
            .len(),
        40
    );
}

#[test]
fn open_errors_are_typed() {
    let dir = TempDir::new().unwrap();
    let e = Store::open(
        dir.path().join("x.db"),
        StoreOptions {
            max_bytes: 0,
            ..StoreOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::InvalidOption {
                option: "max_bytes",
                ..
            }
        ),
        "{e}"
    );
    // A directory where the file should be.
    let e = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains(&dir.path().display().to_string()),
        "{e}"
    );
    // Parent directories are created.
    let nested = dir.path().join("a/b/c.db");
    Store::open(&nested, StoreOptions::default()).unwrap();
    assert!(nested.exists());
    assert_eq!("evict_oldest".parse::<OnFull>(), Ok(OnFull::EvictOldest));
    assert!("drop".parse::<OnFull>().is_err());
    assert_eq!("normal".parse::<Synchronous>(), Ok(Synchronous::Normal));
}

fn shadows_link_to_their_original_and_stay_out_of_lists(place: Place) {
    let store = place.open(1 << 20, OnFull::Refuse);
    store
        .insert(record("orig", "alice", 1, "small", &[("task", "math")]))
        .unwrap();
    for (i, model) in ["big", "mid"].iter().enumerate() {
        let mut shadow = record(
            &format!("sh{i}"),
            ROUTER_OWNER,
            2 + i as i64,
            model,
            &[("task", "math")],
        );
        shadow.shadow_of = Some("orig".into());
        store.insert(shadow).unwrap();
    }
    let listed = |query: ListQuery| ids(&store.list(&query).unwrap());
    assert_eq!(listed(ListQuery::default()), vec!["orig"]);
    assert_eq!(
        listed(ListQuery {
            metadata: vec![("task".into(), "math".into())],
            ..ListQuery::default()
        }),
        vec!["orig"]
    );
    assert_eq!(
        listed(ListQuery {
            include_shadows: true,
            ..ListQuery::default()
        }),
        vec!["orig", "sh0", "sh1"]
    );
    // The client who owns the original does not own its shadows.
    assert!(store.get(Some("alice"), "sh0").unwrap().is_none());
    let shadows = store.shadows_of("orig").unwrap();
    assert_eq!(
        shadows
            .iter()
            .map(|c| (c.model.as_str(), c.shadow_of.as_deref()))
            .collect::<Vec<_>>(),
        vec![("big", Some("orig")), ("mid", Some("orig"))]
    );
    assert_eq!(store.get(None, "orig").unwrap().unwrap().shadow_of, None);
    assert!(store.shadows_of("sh0").unwrap().is_empty());
    // Deleting the original deletes its shadows and gives their bytes back.
    assert!(store.delete(Some("alice"), "orig").unwrap());
    assert!(store.shadows_of("orig").unwrap().is_empty());
    let stats = store.stats().unwrap();
    assert_eq!((stats.records, stats.used_bytes), (0, 0));
}

#[test]
fn a_version_1_database_gains_the_shadow_column() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("s.db");
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        store
            .insert(record("old", "alice", 1, "small", &[]))
            .unwrap();
    }
    {
        // Back to the version-1 schema, as a database written before shadows existed.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP INDEX completions_shadow_of; ALTER TABLE completions DROP COLUMN shadow_of; PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.get(None, "old").unwrap().unwrap().shadow_of, None);
    let mut shadow = record("new", ROUTER_OWNER, 2, "big", &[]);
    shadow.shadow_of = Some("old".into());
    store.insert(shadow).unwrap();
    assert_eq!(store.shadows_of("old").unwrap().len(), 1);
}

fn a_newer_schema_is_refused(place: Place) {
    drop(place.open(1 << 20, OnFull::Refuse));
    place.set_schema_version(99);
    let e = Store::open_location(&place.location(), StoreOptions::default()).unwrap_err();
    assert!(matches!(e, StoreError::Schema { found: 99, .. }), "{e}");
    let message = e.to_string();
    assert!(
        message.contains(&place.location().to_string())
            && message.contains("newer model-router")
            && message.contains("version 99"),
        "{message}"
    );
}

/// Two stores on one database (two server processes would hold the same): writers from both
/// at once under one cap with eviction; the byte total stays exact and under the cap, and
/// every record either store acknowledged is there unless evicted.
fn two_stores_on_one_database_share_the_cap(place: Place) {
    let size = {
        let probe = place.open(1 << 20, OnFull::Refuse);
        let size = probe
            .insert(record("r-9999", "o", 0, "m", &[("k", "v")]))
            .unwrap()
            .bytes;
        assert!(probe.delete(None, "r-9999").unwrap());
        size
    };
    // Ids of one length, so every record counts the same bytes.
    let cap = 25 * size;
    let stores = [
        std::sync::Arc::new(place.open(cap, OnFull::EvictOldest)),
        std::sync::Arc::new(place.open(cap, OnFull::EvictOldest)),
    ];
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = stores[w % 2].clone();
            std::thread::spawn(move || {
                (0..20)
                    .map(|i| {
                        let id = format!("r-{w}{i:03}");
                        let inserted = store
                            .insert(record(&id, "o", i, "m", &[("k", "v")]))
                            .unwrap();
                        assert_eq!(inserted.bytes, size);
                        inserted.evicted
                    })
                    .sum::<u64>()
            })
        })
        .collect();
    let evicted: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    for store in &stores {
        let stats = store.stats().unwrap();
        assert_eq!(stats.records, 25, "the cap holds exactly 25 records");
        assert_eq!(stats.used_bytes, 25 * size);
        assert_eq!(
            stats.records + evicted,
            80,
            "every insert is either kept or counted as evicted"
        );
    }
    assert_eq!(place.metadata_values().len(), 25);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_connection_errors_name_the_database_but_not_the_password() {
    // A loopback port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://router@127.0.0.1:{port}/nowhere");
    let location = router_store::Location::parse(&url, Some("hunter2".into())).unwrap();
    let e = Store::open_location(&location, StoreOptions::default()).unwrap_err();
    assert!(matches!(e, StoreError::Connect { .. }), "{e}");
    let message = e.to_string();
    assert!(
        message.contains(&url) && !message.contains("hunter2"),
        "{message}"
    );
    assert!(!format!("{e:?}").contains("hunter2"));
    let e = Store::open_location(
        &location,
        StoreOptions {
            max_bytes: 0,
            ..StoreOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::InvalidOption {
                option: "max_bytes",
                ..
            }
        ),
        "{e}"
    );
}

#[cfg(not(feature = "postgres"))]
#[test]
fn without_the_postgres_feature_a_url_is_refused_clearly() {
    let location = router_store::Location::parse("postgres://router@127.0.0.1:1/db", None).unwrap();
    let e = Store::open_location(&location, StoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("feature `postgres`"), "{e}");
}

/// Usage rows (issue #15): an upsert sums into the row of the same (minute, deployment,
/// model, spillover source), from one store or two on the same database; reads are in key
/// order from a minute on; pruning deletes the minutes before one; usage does not count
/// against the byte cap.
fn usage_rows_sum_per_key_and_prune_by_minute(place: Place) {
    use router_store::UsageRow;
    let row = |minute: i64, deployment: &str, from: &str, requests: u64, tokens: u64| UsageRow {
        spillover_from: from.to_string(),
        requests,
        input_tokens: tokens,
        output_tokens: tokens / 2,
        estimated: 1,
        throttled: 2,
        ..UsageRow::new(minute, deployment, "gpt-4")
    };
    let a = place.open(1 << 20, OnFull::Refuse);
    let b = place.open(1 << 20, OnFull::Refuse);
    a.add_usage(&[
        row(10, "ptu", "", 1, 100),
        row(10, "paygo", "ptu", 1, 40),
        row(11, "ptu", "", 2, 10),
    ])
    .unwrap();
    b.add_usage(&[row(10, "ptu", "", 3, 300)]).unwrap();
    a.add_usage(&[]).unwrap();
    let all = b.usage(None).unwrap();
    let keys: Vec<(i64, &str, &str)> = all
        .iter()
        .map(|r| (r.minute, r.deployment.as_str(), r.spillover_from.as_str()))
        .collect();
    assert_eq!(
        keys,
        [(10, "paygo", "ptu"), (10, "ptu", ""), (11, "ptu", "")]
    );
    let summed = &all[1];
    assert_eq!(
        (
            summed.requests,
            summed.input_tokens,
            summed.output_tokens,
            summed.estimated,
            summed.throttled
        ),
        (4, 400, 200, 2, 4)
    );
    assert_eq!(a.usage(Some(11)).unwrap().len(), 1);
    assert_eq!(a.stats().unwrap().used_bytes, 0, "usage is outside the cap");
    assert_eq!(a.prune_usage(11).unwrap(), 2);
    assert_eq!(b.usage(None).unwrap(), [row(11, "ptu", "", 2, 10)]);
}
