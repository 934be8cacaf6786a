//! [`Routing`]: a bundle, its catalog and a policy, routing with one call.

use std::path::Path;

use router_core::{Prediction, Router};
use router_policy::{
    Catalog, Decision, Policy, PolicyDefaults, PolicyError, RouteRequest, TaskGateNote,
};

use crate::input::{RouteInput, DEFAULT_RECENT_TURNS};
use crate::{load_catalog, load_router, RoutingError};

/// A loaded router bundle, its catalog and a deployment's policy defaults: routes a request with
/// one call.
///
/// Immutable, `Send + Sync` and without an async runtime: load it once and share it across
/// threads by reference or in an `Arc`.
///
/// # Costs
///
/// - [`Routing::load`]: milliseconds for a static-tier bundle (it reads its embedding table);
///   for a BERT-tier bundle, reading the encoder's weights (about 90 MB for all-MiniLM-L6-v2).
///   Do it once at start-up.
/// - [`Routing::route`]: one encoder pass plus the policy. The static tier takes microseconds
///   (a table look-up per word piece; the policy's own share is about a microsecond), so calling
///   it on an async executor's thread is fine. The BERT tier takes milliseconds of CPU per
///   prompt: call it from a blocking pool (`tokio::task::spawn_blocking`) or a thread of your
///   own, and prefer [`Routing::route_batch`], which runs one padded forward pass for many prompts.
#[derive(Debug)]
pub struct Routing {
    router: Router,
    policy: Policy,
    recent_turns: usize,
}

impl Routing {
    /// Loads a bundle (a directory, or a hub repo id `ID[@REVISION]`, see [`load_router`]), the
    /// catalog it ships ([`crate::CATALOG_FILE`]) and the default policy (balanced mode, every
    /// model).
    ///
    /// ```
    /// use router_embed::{RouteInput, Routing};
    /// let routing = Routing::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/routerbench"))?;
    /// let decision = routing.route(&RouteInput::prompt("What is the capital of Australia?"))?;
    /// assert!(routing.models().contains(&decision.model));
    /// # Ok::<(), router_embed::RoutingError>(())
    /// ```
    pub fn load(dir_or_hub_id: impl AsRef<str>) -> Result<Self, RoutingError> {
        let router = load_router(dir_or_hub_id.as_ref())?;
        let catalog = load_catalog(&router, None::<&Path>)?;
        Self::from_parts(router, catalog, PolicyDefaults::default())
    }

    /// Combines a router, a catalog and a deployment's defaults, validating the catalog and the
    /// defaults against the router's models ([`Policy::new`]).
    ///
    /// ```
    /// use router_embed::{load_catalog, load_router, RouteInput, Routing};
    /// use router_policy::{Mode, PolicyDefaults};
    ///
    /// let router = load_router(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/routerbench"))?;
    /// let catalog = load_catalog(&router, None)?;
    /// let routing = Routing::from_parts(router, catalog, PolicyDefaults::new(Mode::Cost))?;
    /// assert_eq!(routing.route(&RouteInput::prompt("Hi"))?.mode, Mode::Cost);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_parts(
        router: Router,
        catalog: Catalog,
        defaults: PolicyDefaults,
    ) -> Result<Self, RoutingError> {
        let policy = Policy::new(catalog, router.models().to_vec(), defaults)?;
        Ok(Routing {
            router,
            policy,
            recent_turns: DEFAULT_RECENT_TURNS,
        })
    }

    /// Sets how many non-system chat messages, from the end, the router reads (see
    /// [`crate::routing_text`]; default [`DEFAULT_RECENT_TURNS`]).
    pub fn with_recent_turns(mut self, recent_turns: usize) -> Self {
        self.recent_turns = recent_turns;
        self
    }

    /// The underlying models, in the order of [`Routing::scores`].
    pub fn models(&self) -> &[String] {
        self.router.models()
    }

    /// The loaded bundle.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Routes one request: the chosen model and the whole explanation. A bundle with an
    /// output-length head charges each model its predicted output tokens for this prompt.
    pub fn route(&self, input: &RouteInput) -> Result<Decision, RoutingError> {
        self.decide_prediction(&self.predict(input)?, input)
    }

    /// The policy step on a [`Prediction`] computed earlier by [`Routing::predict`]: its qualities,
    /// and its output lengths when the bundle predicts them (as [`Routing::route`] decides), e.g.
    /// to decide again with a saturated model added to [`RouteInput::exclude`]. When the bundle's
    /// task gate blended the scores, the decision says so ([`Decision::task_gate`]).
    pub fn decide_prediction(
        &self,
        prediction: &Prediction,
        input: &RouteInput,
    ) -> Result<Decision, RoutingError> {
        Ok(decide_on_prediction(
            &self.policy,
            prediction,
            &input.request(),
        )?)
    }

    /// The policy step alone, on scores computed earlier by [`Routing::scores`]: for a caller
    /// that scores elsewhere (a batching worker) or decides again on the same scores, e.g. with a
    /// saturated model added to [`RouteInput::exclude`]. Microseconds. Output lengths are the
    /// catalog's (the scores carry no predicted lengths).
    pub fn decide(&self, scores: &[f32], input: &RouteInput) -> Result<Decision, RoutingError> {
        Ok(self.policy.decide(scores, &input.request())?)
    }

    /// Routes many requests with one encoder pass; each gets the decision [`Routing::route`]
    /// would give it alone. The outer error is a failure of the encoder, which fails the whole
    /// batch; an inner error concerns that input only (e.g. its subset names an unknown model).
    ///
    /// ```
    /// use router_embed::{RouteInput, Routing};
    /// let routing = Routing::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/routerbench"))?;
    /// let inputs = [RouteInput::prompt("Hi"), RouteInput::prompt("Hi").subset(["no-such-model"])];
    /// let decisions = routing.route_batch(&inputs)?;
    /// assert_eq!(decisions[0].as_ref().ok(), routing.route(&inputs[0]).ok().as_ref());
    /// assert!(decisions[1].is_err());
    /// # Ok::<(), router_embed::RoutingError>(())
    /// ```
    pub fn route_batch(
        &self,
        inputs: &[RouteInput],
    ) -> Result<Vec<Result<Decision, RoutingError>>, RoutingError> {
        let texts: Vec<Result<String, RoutingError>> = inputs
            .iter()
            .map(|input| input.routing_text(self.recent_turns))
            .collect();
        let scorable: Vec<&str> = texts
            .iter()
            .filter_map(|text| text.as_deref().ok())
            .collect();
        let mut predictions = self.router.predict_batch(&scorable)?.into_iter();
        let decisions = inputs
            .iter()
            .zip(texts)
            .map(|(input, text)| {
                text?;
                let prediction = predictions.next().ok_or_else(|| {
                    router_core::CoreError::Invalid("the router returned too few rows".into())
                })?;
                self.decide_prediction(&prediction, input)
            })
            .collect();
        Ok(decisions)
    }

    /// The predicted quality and, with a length head, output tokens of each model on the input's
    /// routing text, in [`Routing::models`] order.
    pub fn predict(&self, input: &RouteInput) -> Result<Prediction, RoutingError> {
        Ok(self
            .router
            .predict(&input.routing_text(self.recent_turns)?)?)
    }

    /// The predicted quality of each model on the input's routing text, in [`Routing::models`]
    /// order (the scores a decision is made from; the input's options play no part).
    pub fn scores(&self, input: &RouteInput) -> Result<Vec<f32>, RoutingError> {
        Ok(self.router.score(&input.routing_text(self.recent_turns)?)?)
    }
}

/// The policy's decision on a [`Prediction`]: its qualities, its output lengths when the bundle
/// predicts them, and, when the bundle's task gate blended the scores, a note saying so
/// ([`Decision::task_gate`]). [`Routing`] decides through it, and so does a server that holds
/// its own [`Policy`] and [`RouteRequest`].
pub fn decide_on_prediction(
    policy: &Policy,
    prediction: &Prediction,
    request: &RouteRequest,
) -> Result<Decision, PolicyError> {
    let output_tokens = prediction.output_tokens.as_deref();
    let mut decision =
        policy.decide_with_output_tokens(&prediction.scores, output_tokens, request)?;
    decision.task_gate = prediction.task_gate.as_ref().map(|gate| TaskGateNote {
        task: gate.task.clone(),
        confidence: gate.confidence,
        blend: gate.blend,
    });
    Ok(decision)
}
