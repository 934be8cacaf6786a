//! The judge of model graders (`score_model`, `label_model`): a catalog model asked through
//! `router-dispatch`, with the server config's deployments, retries, timeouts, spillover and
//! cooldowns.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use router_dispatch::Dispatcher;
use router_policy::Catalog;
use router_training::grade::ChatModel;
use serde_json::{Map, Value};

use crate::llm::ask_model;

/// Asks catalog models for chat completions through a [`Dispatcher`]; blocking, for graders
/// running on threads outside the tokio runtime whose `handle` it holds.
pub struct DispatchJudge {
    dispatcher: Arc<Dispatcher>,
    catalog: Catalog,
    handle: tokio::runtime::Handle,
}

impl DispatchJudge {
    /// A judge over `dispatcher` for the models of `catalog`, whose requests run on `handle`.
    pub fn new(
        dispatcher: Arc<Dispatcher>,
        catalog: Catalog,
        handle: tokio::runtime::Handle,
    ) -> Self {
        DispatchJudge {
            dispatcher,
            catalog,
            handle,
        }
    }

    /// A judge from a server config file (`model-router.toml`): its `[[deployments]]`,
    /// `[dispatch]` and `[[models]]` catalog.
    pub fn from_config(path: &Path, handle: tokio::runtime::Handle) -> Result<Self> {
        let config = router_server::ServerConfig::load(path)
            .with_context(|| format!("reading the judge's config {}", path.display()))?;
        let dispatcher = Dispatcher::new(config.deployments, config.dispatch)
            .with_context(|| format!("{}: the deployments", path.display()))?;
        Ok(DispatchJudge::new(
            Arc::new(dispatcher),
            config.catalog,
            handle,
        ))
    }

    /// Checks that the catalog has each of `models` with at least one deployment, so a grading
    /// run fails before its first request rather than on every row.
    pub fn check_models<'m>(&self, models: impl IntoIterator<Item = &'m str>) -> Result<()> {
        for model in models {
            self.deployments_of(model).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    fn deployments_of(&self, model: &str) -> std::result::Result<&[String], String> {
        let spec = self
            .catalog
            .get(model)
            .ok_or_else(|| format!("the judge model {model:?} is not in the config's catalog"))?;
        if spec.deployments.is_empty() {
            return Err(format!(
                "the judge model {model:?} has no deployments in the config"
            ));
        }
        Ok(&spec.deployments)
    }
}

impl ChatModel for DispatchJudge {
    fn complete(
        &self,
        model: &str,
        messages: &[Value],
        sampling_params: &Map<String, Value>,
    ) -> std::result::Result<String, String> {
        let deployments = self.deployments_of(model)?;
        let mut body = Map::new();
        for (key, value) in sampling_params {
            // The grader's own fields win: sampling parameters cannot redirect or stream the call.
            if !matches!(key.as_str(), "model" | "messages" | "stream") {
                body.insert(key.clone(), value.clone());
            }
        }
        body.insert("model".into(), Value::String(model.to_owned()));
        body.insert("messages".into(), Value::Array(messages.to_vec()));
        let answer = self.handle.block_on(ask_model(
            &self.dispatcher,
            deployments,
            &Value::Object(body),
        ))?;
        Ok(answer.content)
    }
}
