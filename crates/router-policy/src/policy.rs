//! The policy: filters, band, choice.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::band::{choose_in_band, in_band, BandCandidate, BandChoice};
use crate::decision::{Decision, EligibleModel, Exclusion};
use crate::mode::check_band;
use crate::{estimated_cost, Capabilities, Catalog, Mode, PolicyError};

/// A deployment's routing defaults; each can be overridden per request.
///
/// As a TOML or JSON table: `mode` (default `balanced`), `band` (optional custom band replacing
/// the mode's), `subset` (optional list of models; absent means every model).
///
/// ```
/// use router_policy::{Mode, PolicyDefaults};
/// let d = PolicyDefaults::new(Mode::Cost).band(0.1).subset(["a", "b"]);
/// assert_eq!(d.band, Some(0.1));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyDefaults {
    /// The default mode.
    pub mode: Mode,
    /// A custom band replacing the mode's band, a fraction in `[0, 1]`.
    pub band: Option<f64>,
    /// The models this deployment may route to; `None` means all of the bundle's columns.
    pub subset: Option<Vec<String>>,
}

impl PolicyDefaults {
    /// Defaults with this mode, no custom band, no subset.
    pub fn new(mode: Mode) -> Self {
        PolicyDefaults {
            mode,
            band: None,
            subset: None,
        }
    }

    /// Sets a custom band.
    pub fn band(mut self, band: f64) -> Self {
        self.band = Some(band);
        self
    }

    /// Restricts the deployment to these models.
    pub fn subset<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.subset = Some(models.into_iter().map(Into::into).collect());
        self
    }
}

/// What the policy needs to know about one request.
///
/// ```
/// use router_policy::{Capability, Mode, RouteRequest};
/// let r = RouteRequest::new(1200)
///     .max_tokens(256)
///     .need(Capability::Tools)
///     .mode(Mode::Cost)
///     .subset(["gpt-4o", "gpt-4o-mini"]);
/// assert!(r.needs.tools && r.band.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteRequest {
    /// Estimated prompt tokens (see [`estimate_chat_tokens`](crate::estimate_chat_tokens)).
    pub prompt_tokens: usize,
    /// The request's `max_tokens`, if it caps its output.
    pub max_tokens: Option<u32>,
    /// The capabilities the request needs.
    pub needs: Capabilities,
    /// Overrides the deployment's mode (and its custom band, if any).
    pub mode: Option<Mode>,
    /// A custom band overriding everything else.
    pub band: Option<f64>,
    /// Narrows the deployment's subset.
    pub subset: Option<Vec<String>>,
    /// Models to skip, e.g. those whose deployments are all saturated.
    pub exclude: Vec<String>,
}

impl RouteRequest {
    /// A request of `prompt_tokens` estimated prompt tokens, with every option unset.
    pub fn new(prompt_tokens: usize) -> Self {
        RouteRequest {
            prompt_tokens,
            ..RouteRequest::default()
        }
    }

    /// Sets `max_tokens`.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets the needed capabilities.
    pub fn needs(mut self, needs: Capabilities) -> Self {
        self.needs = needs;
        self
    }

    /// Adds one needed capability.
    pub fn need(mut self, capability: crate::Capability) -> Self {
        self.needs = self.needs.with(capability);
        self
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Sets a custom band.
    pub fn band(mut self, band: f64) -> Self {
        self.band = Some(band);
        self
    }

    /// Narrows the subset to these models.
    pub fn subset<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.subset = Some(models.into_iter().map(Into::into).collect());
        self
    }

    /// Skips these models.
    pub fn exclude<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exclude = models.into_iter().map(Into::into).collect();
        self
    }
}

/// Every column of one request after the filters, keyed by model name.
#[derive(Default)]
struct SortedModels {
    predictions: BTreeMap<String, Option<f32>>,
    predicted_output_tokens: BTreeMap<String, u64>,
    eligible: BTreeMap<String, EligibleModel>,
    excluded: BTreeMap<String, Exclusion>,
}

/// A validated catalog, the bundle's columns and a deployment's defaults: decides requests.
///
/// Immutable and `Sync`: share one per deployment across threads.
#[derive(Debug, Clone)]
pub struct Policy {
    catalog: Catalog,
    columns: Vec<String>,
    defaults: PolicyDefaults,
    /// For each column, its index in `catalog.models`, so `decide` does no name look-ups.
    spec_of_column: Vec<Option<usize>>,
}

const DEPLOYMENT_SUBSET: &str = "the deployment subset";
const REQUEST_SUBSET: &str = "the request subset";

impl Policy {
    /// Validates `catalog` ([`Catalog::validate`]) and `defaults` against the bundle's `columns`
    /// (the names of the predicted models, in prediction order): every catalog entry and every
    /// subset entry must be a column, the band must be in `[0, 1]`, a subset must not be empty.
    /// A column without a catalog entry is allowed and is never eligible.
    pub fn new(
        catalog: Catalog,
        columns: Vec<String>,
        defaults: PolicyDefaults,
    ) -> Result<Self, PolicyError> {
        let mut seen = BTreeSet::new();
        for column in &columns {
            if !seen.insert(column.as_str()) {
                return Err(PolicyError::DuplicateColumn {
                    column: column.clone(),
                });
            }
        }
        catalog.validate()?;
        for model in &catalog.models {
            check_known(&columns, &model.name, "the catalog entry")?;
        }
        if let Some(band) = defaults.band {
            check_band(band)?;
        }
        if let Some(subset) = &defaults.subset {
            check_subset(&columns, subset, DEPLOYMENT_SUBSET)?;
        }
        let spec_of_column = columns
            .iter()
            .map(|c| catalog.models.iter().position(|m| &m.name == c))
            .collect();
        Ok(Policy {
            catalog,
            columns,
            defaults,
            spec_of_column,
        })
    }

    /// The bundle's columns, in prediction order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The deployment's defaults.
    pub fn defaults(&self) -> &PolicyDefaults {
        &self.defaults
    }

    /// Decides one request. `predictions[i]` is the predicted quality of `columns()[i]`; every
    /// model's output is charged at its catalog `expected_output_tokens`
    /// ([`Policy::decide_with_output_tokens`] with no predicted lengths).
    ///
    /// Errors when the predictions have the wrong length, the request's band, subset or exclude
    /// list is invalid (unknown names, empty subset, band outside `[0, 1]`), or no model is
    /// eligible ([`PolicyError::NoEligibleModel`], carrying every model's reason).
    pub fn decide(
        &self,
        predictions: &[f32],
        request: &RouteRequest,
    ) -> Result<Decision, PolicyError> {
        self.decide_with_output_tokens(predictions, None, request)
    }

    /// Decides one request as [`Policy::decide`] does, charging each model the output length a
    /// bundle's output-length head predicted for it on this prompt: `output_tokens[i]` is
    /// `columns()[i]`'s predicted answer length in tokens. `None` (a bundle without a length head)
    /// charges the catalog's `expected_output_tokens`; the rule is
    /// [`ModelSpec::billed_output_tokens_for`](crate::ModelSpec::billed_output_tokens_for). The decision
    /// lists the predicted lengths in [`Decision::predicted_output_tokens`].
    pub fn decide_with_output_tokens(
        &self,
        predictions: &[f32],
        output_tokens: Option<&[f32]>,
        request: &RouteRequest,
    ) -> Result<Decision, PolicyError> {
        let (mode, band, custom_band) = self.check_request(predictions, output_tokens, request)?;
        let input_tokens = u64::try_from(request.prompt_tokens).unwrap_or(u64::MAX);
        let SortedModels {
            predictions,
            predicted_output_tokens,
            mut eligible,
            excluded,
        } = self.sort_models(predictions, output_tokens, input_tokens, request);

        // q* over the eligible models only: an excluded model's quality must not raise the bar.
        let candidates: Vec<BandCandidate<'_>> = eligible
            .iter()
            .map(|(name, e)| BandCandidate {
                name,
                predicted_quality: e.predicted_quality,
                estimated_cost: e.estimated_cost,
            })
            .collect();
        let Some(BandChoice {
            chosen,
            q_star,
            threshold,
        }) = choose_in_band(&candidates, band)
        else {
            return Err(PolicyError::NoEligibleModel { excluded });
        };
        let (model, estimated_cost) = (
            candidates[chosen].name.to_owned(),
            candidates[chosen].estimated_cost,
        );
        drop(candidates);
        for e in eligible.values_mut() {
            e.within_band = in_band(e.predicted_quality, threshold);
        }
        Ok(Decision {
            model,
            estimated_cost,
            mode,
            band,
            custom_band,
            q_star,
            threshold,
            input_tokens,
            predictions,
            predicted_output_tokens,
            eligible,
            excluded,
            task_gate: None,
        })
    }

    /// Checks the request against the bundle (prediction and length counts, subset and exclude
    /// names) and resolves its band: (mode, band, whether the band is custom).
    fn check_request(
        &self,
        predictions: &[f32],
        output_tokens: Option<&[f32]>,
        request: &RouteRequest,
    ) -> Result<(Mode, f64, bool), PolicyError> {
        if predictions.len() != self.columns.len() {
            return Err(PolicyError::PredictionLength {
                expected: self.columns.len(),
                got: predictions.len(),
            });
        }
        if let Some(lengths) = output_tokens.filter(|l| l.len() != self.columns.len()) {
            return Err(PolicyError::OutputTokensLength {
                expected: self.columns.len(),
                got: lengths.len(),
            });
        }
        let resolved = self.resolve_band(request)?;
        if let Some(subset) = &request.subset {
            check_subset(&self.columns, subset, REQUEST_SUBSET)?;
        }
        for name in &request.exclude {
            check_known(&self.columns, name, "the request's exclude list")?;
        }
        Ok(resolved)
    }

    /// Runs every column through the filters: what the decision reports of each model.
    fn sort_models(
        &self,
        predictions: &[f32],
        output_tokens: Option<&[f32]>,
        input_tokens: u64,
        request: &RouteRequest,
    ) -> SortedModels {
        let mut sorted = SortedModels::default();
        for (i, name) in self.columns.iter().enumerate() {
            let q = predictions[i];
            sorted
                .predictions
                .insert(name.clone(), q.is_finite().then_some(q));
            let length = output_tokens.map(|lengths| lengths[i]);
            if let Some(tokens) = length.filter(|t| t.is_finite()) {
                sorted
                    .predicted_output_tokens
                    .insert(name.clone(), tokens.round().max(0.0) as u64);
            }
            match self.filter(i, q, length, input_tokens, request) {
                Ok(e) => {
                    sorted.eligible.insert(name.clone(), e);
                }
                Err(why) => {
                    sorted.excluded.insert(name.clone(), why);
                }
            }
        }
        sorted
    }

    /// The band in effect, by precedence: the request's band, the request's mode, the deployment's
    /// band, the deployment's mode. An explicit request mode overrides a deployment's custom band:
    /// the request is the more specific.
    fn resolve_band(&self, request: &RouteRequest) -> Result<(Mode, f64, bool), PolicyError> {
        let mode = request.mode.unwrap_or(self.defaults.mode);
        Ok(match (request.band, request.mode, self.defaults.band) {
            (Some(band), _, _) => (mode, check_band(band)?, true),
            (None, Some(mode), _) => (mode, mode.band(), false),
            (None, None, Some(band)) => (mode, band, true),
            (None, None, None) => (mode, mode.band(), false),
        })
    }

    /// Runs the filters on column `i`, in the documented order; the first that fails is the reason.
    /// `predicted_length` is the column's predicted output tokens, if the bundle predicts them.
    fn filter(
        &self,
        i: usize,
        q: f32,
        predicted_length: Option<f32>,
        input_tokens: u64,
        request: &RouteRequest,
    ) -> Result<EligibleModel, Exclusion> {
        let name = &self.columns[i];
        let spec = self.spec_of_column[i]
            .and_then(|s| self.catalog.models.get(s))
            .ok_or(Exclusion::NoCatalogEntry)?;
        let in_request = request.subset.as_ref().map(|s| s.iter().any(|m| m == name));
        if let Some(subset) = &self.defaults.subset {
            if !subset.iter().any(|m| m == name) {
                return Err(if in_request == Some(true) {
                    Exclusion::RequestedOutsideSubset
                } else {
                    Exclusion::NotInSubset
                });
            }
        }
        if in_request == Some(false) {
            return Err(Exclusion::NotInRequestSubset);
        }
        if request.exclude.iter().any(|m| m == name) {
            return Err(Exclusion::Saturated);
        }
        if !q.is_finite() {
            return Err(Exclusion::InvalidPrediction);
        }
        let needed = input_tokens.saturating_add(spec.reserved_output_tokens(request.max_tokens));
        if needed > spec.context_window {
            return Err(Exclusion::ContextWindow {
                needed,
                window: spec.context_window,
            });
        }
        let missing = spec.capabilities.missing(&request.needs);
        if !missing.is_empty() {
            return Err(Exclusion::MissingCapabilities { missing });
        }
        let output_tokens = spec.billed_output_tokens_for(request.max_tokens, predicted_length);
        Ok(EligibleModel {
            predicted_quality: q,
            output_tokens,
            estimated_cost: estimated_cost(spec, input_tokens, output_tokens),
            within_band: false,
        })
    }
}

fn check_known(columns: &[String], name: &str, origin: &'static str) -> Result<(), PolicyError> {
    if columns.iter().any(|c| c == name) {
        Ok(())
    } else {
        Err(PolicyError::UnknownModel {
            model: name.to_string(),
            origin,
            columns: columns.to_vec(),
        })
    }
}

fn check_subset(
    columns: &[String],
    subset: &[String],
    origin: &'static str,
) -> Result<(), PolicyError> {
    if subset.is_empty() {
        return Err(PolicyError::EmptySubset { origin });
    }
    subset
        .iter()
        .try_for_each(|name| check_known(columns, name, origin))
}
