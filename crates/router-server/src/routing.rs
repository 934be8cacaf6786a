//! The router in use: one loaded bundle's scorer and policy, with its name and version.
//!
//! A request takes an `Arc` of the current [`Routing`] when it starts and keeps it to its end,
//! so a reload (`POST /admin/reload`, SIGHUP) swaps the server to a new bundle without touching
//! requests in flight: they finish on the old one, whose scorer (and its batching thread, for
//! the BERT tier) stops when the last of them lets go of it (the thread ends when its queue's
//! last sender is dropped).

use std::path::Path;

use router_core::Router;
use router_dispatch::Dispatcher;
use router_policy::{Catalog, Policy, PolicyDefaults};

use crate::{Metrics, Scorer, ServerConfig, ServerError};

/// Prompts every bundle must score before it serves: each model's prediction on each of them
/// must be a finite number (a head with NaN or infinite weights fails here, not on traffic).
pub const PROBE_PROMPTS: &[&str] = &[
    "Hello!",
    "What is 17 * 23? Answer with the number only.",
    "Write a Python function that returns the n-th Fibonacci number, with tests.",
    "Summarise the causes of the First World War in three paragraphs for a history exam.",
];

/// A loaded bundle ready to route: its scorer and the policy over its columns.
pub struct Routing {
    scorer: Scorer,
    policy: Policy,
    name: String,
    version: String,
    /// The whole catalog: the routed models and those served only when named.
    catalog: Catalog,
}

/// The catalog entries that `columns` (the bundle's predicted models) include. The others are
/// served only when named: a request for that model, a shadow, a grader's judge. So a candidate
/// can be shadowed, or a judge configured, before any router predicts it.
fn routed_catalog(catalog: &Catalog, columns: &[String]) -> Catalog {
    Catalog::new(
        catalog
            .models
            .iter()
            .filter(|m| columns.contains(&m.name))
            .cloned()
            .collect(),
    )
}

impl Routing {
    /// Loads `config.bundle`, checks it against the catalog (every bundle column priced, the
    /// subset known, every model's deployments known to `dispatcher`), scores
    /// [`PROBE_PROMPTS`], and starts its [`Scorer`] (which counts the prompts it skips in
    /// `metrics`). Blocking (it reads the bundle).
    pub fn load(
        config: &ServerConfig,
        dispatcher: &Dispatcher,
        metrics: &Metrics,
    ) -> Result<Routing, ServerError> {
        let file = config.file.clone();
        let bad = |key: &str, reason: String| ServerError::Config {
            file: file.clone(),
            key: key.into(),
            reason,
        };
        let router = Router::load(&config.bundle).map_err(|source| ServerError::Bundle {
            file: file.clone(),
            source,
        })?;
        let columns = router.models().to_vec();
        let routed = routed_catalog(&config.catalog, &columns);
        // The catalog against the bundle.
        Policy::new(
            routed.clone(),
            columns.clone(),
            PolicyDefaults::new(config.mode),
        )
        .map_err(|e| bad("models", e.to_string()))?;
        if let Some(subset) = &config.subset {
            if let Some(unknown) = subset.iter().find(|m| !columns.contains(m)) {
                return Err(bad(
                    "router.subset",
                    format!("`{unknown}` is not a model of the bundle"),
                ));
            }
        }
        for model in &config.catalog.models {
            if let Some(name) = model
                .deployments
                .iter()
                .find(|d| dispatcher.deployment(d).is_none())
            {
                return Err(bad(
                    &format!("models.{}.deployments", model.name),
                    format!("`{name}` is not a deployment of the running server"),
                ));
            }
        }
        // Only models with deployments can be chosen.
        let deployed: Vec<String> = routed
            .models
            .iter()
            .filter(|m| !m.deployments.is_empty())
            .filter(|m| config.subset.as_ref().is_none_or(|s| s.contains(&m.name)))
            .map(|m| m.name.clone())
            .collect();
        if deployed.is_empty() {
            return Err(bad(
                "router.subset",
                "no model of the subset has deployments".into(),
            ));
        }
        let mut defaults = PolicyDefaults::new(config.mode).subset(deployed);
        if let Some(band) = config.band {
            defaults = defaults.band(band);
        }
        let policy =
            Policy::new(routed, columns, defaults).map_err(|e| bad("router", e.to_string()))?;
        probe(&router, &config.bundle)?;
        let name = router.config().name.clone();
        let version = router.config().version.clone();
        let scorer = Scorer::spawn(
            router,
            config.max_batch,
            config.batch_tokens,
            config.queue,
            metrics.scorer_skipped(),
        )?;
        Ok(Routing {
            scorer,
            policy,
            name,
            version,
            catalog: config.catalog.clone(),
        })
    }

    /// The scorer.
    pub fn scorer(&self) -> &Scorer {
        &self.scorer
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The whole catalog, for models named by a request, a shadow or a judge; routing chooses
    /// only among [`Policy::catalog`]'s, the models the bundle predicts.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The bundle's name (`router.json`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bundle's version (`router.json`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `name@version`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Scores [`PROBE_PROMPTS`]: every prediction must be a finite number.
fn probe(router: &Router, bundle: &Path) -> Result<(), ServerError> {
    let refused = |reason: String| ServerError::Probe {
        bundle: bundle.to_path_buf(),
        reason,
    };
    let scored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        router.score_batch(PROBE_PROMPTS)
    }))
    .map_err(|_| refused("the model panicked on the probe prompts".into()))?
    .map_err(|e| refused(format!("scoring the probe prompts failed: {e}")))?;
    if scored.len() != PROBE_PROMPTS.len() {
        return Err(refused(format!(
            "{} score rows for {} probe prompts",
            scored.len(),
            PROBE_PROMPTS.len()
        )));
    }
    for (prompt, row) in PROBE_PROMPTS.iter().zip(&scored) {
        if row.len() != router.models().len() {
            return Err(refused(format!(
                "{} scores for {} models",
                row.len(),
                router.models().len()
            )));
        }
        if let Some((model, value)) = router
            .models()
            .iter()
            .zip(row)
            .find(|(_, v)| !v.is_finite())
        {
            return Err(refused(format!(
                "it predicts {value} for `{model}` on the probe prompt {prompt:?} (are its head weights finite?)"
            )));
        }
    }
    Ok(())
}
