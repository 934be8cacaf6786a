//! Files from the Hugging Face hub, cache first.

use std::path::PathBuf;

use hf_hub::{Cache, Repo, RepoType};

use crate::error::{CoreError, Result};

/// The path of `file` of model repo `repo` at `revision`, from the hub cache (`$HF_HOME/hub`,
/// default `~/.cache/huggingface/hub`), downloading it only when it is not cached and
/// `HF_HUB_OFFLINE` is not set.
///
/// `revision` may be a branch (resolved through `refs/<branch>`, as huggingface_hub writes it) or
/// a commit hash (looked up in `snapshots/<hash>/` directly).
pub fn hub_file(repo: &str, revision: &str, file: &str) -> Result<PathBuf> {
    let cache = Cache::from_env();
    let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    if let Some(path) = cache.repo(hub_repo.clone()).get(file) {
        return Ok(path);
    }
    let pinned = cache
        .path()
        .join(hub_repo.folder_name())
        .join("snapshots")
        .join(revision)
        .join(file);
    if pinned.is_file() {
        return Ok(pinned);
    }
    let hub_error = |message: String| CoreError::Hub {
        repo: repo.to_string(),
        revision: revision.to_string(),
        file: file.to_string(),
        message,
    };
    if offline() {
        return Err(hub_error(format!(
            "not in the cache at {} and HF_HUB_OFFLINE is set",
            cache.path().display()
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| hub_error(e.to_string()))?;
    api.repo(hub_repo).get(file).map_err(|e| {
        hub_error(format!(
            "not in the cache at {} and the download failed: {e}",
            cache.path().display()
        ))
    })
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
        .unwrap_or(false)
}
