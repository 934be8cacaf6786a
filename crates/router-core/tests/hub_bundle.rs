//! `Router::from_hub` on a bundle published as a hub repo, loaded offline from a filled cache.
//! Alone in its test binary because it points `HF_HOME` at a temporary cache for the process.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use router_core::Router;

const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";

fn shipped_bundle() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/routerbench")
}

/// Lays the shipped bundle out as huggingface_hub caches a model repo: `snapshots/<rev>/` and
/// `refs/main` naming the revision.
fn fill_cache(hf_home: &Path, repo_folder: &str) {
    let repo = hf_home.join("hub").join(repo_folder);
    let snapshot = repo.join("snapshots").join(REVISION);
    std::fs::create_dir_all(&snapshot).expect("snapshot dir");
    for file in [
        "router.json",
        "tokenizer.json",
        "encoder.safetensors",
        "head.safetensors",
        "README.md",
    ] {
        std::fs::copy(shipped_bundle().join(file), snapshot.join(file)).expect("copy bundle file");
    }
    std::fs::create_dir_all(repo.join("refs")).expect("refs dir");
    std::fs::write(repo.join("refs").join("main"), REVISION).expect("refs/main");
}

#[test]
fn loads_a_bundle_repo_offline_by_branch_and_by_commit() {
    let hf_home = tempfile::TempDir::new().expect("tempdir");
    fill_cache(hf_home.path(), "models--acme--router");
    std::env::set_var("HF_HOME", hf_home.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let local = Router::load(shipped_bundle()).expect("shipped bundle");
    let prompt =
        "Write a function to remove all elements from a given list present in another list.";
    let expected = local.score(prompt).expect("score");
    for revision in [None, Some("main"), Some(REVISION)] {
        let router = Router::from_hub("acme/router", revision).expect("from the cache");
        assert_eq!(router.models(), local.models());
        assert_eq!(
            router.score(prompt).expect("score"),
            expected,
            "revision {revision:?}"
        );
    }

    let missing = Router::from_hub("acme/absent", None).expect_err("nothing cached");
    assert!(missing.to_string().contains("HF_HUB_OFFLINE"), "{missing}");
}
