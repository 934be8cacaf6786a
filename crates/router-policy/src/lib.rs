//! Predicted qualities + catalog + request → one deterministic, explained routing decision.
//!
//! `router-core` predicts, for a prompt, the quality each underlying model would reach on it.
//! This crate turns those predictions into a choice. It is pure code: no I/O, no async, no
//! global state; a [`Policy`] is immutable and can be shared across threads, and other services
//! embed it.
//!
//! # The decision
//!
//! 1. **Filters**, in this order; a model removed by one is recorded with that first reason
//!    ([`Exclusion`]) and not looked at again:
//!    1. a bundle column with no catalog entry is never eligible ([`Exclusion::NoCatalogEntry`]);
//!    2. the subset: the deployment's ([`PolicyDefaults::subset`]), narrowed by the request's
//!       ([`RouteRequest::subset`]). A request can narrow but never widen: a model it names
//!       outside the deployment's subset is excluded as [`Exclusion::RequestedOutsideSubset`];
//!    3. the request's `exclude` list ([`Exclusion::Saturated`]; dispatch puts there models whose
//!       deployments are all saturated);
//!    4. a NaN or infinite prediction ([`Exclusion::InvalidPrediction`]): ineligible rather than
//!       an error, so one broken output column does not take the router down;
//!    5. the context window: estimated prompt tokens + the request's `max_tokens` (or, when
//!       absent, the model's `expected_output_tokens`) must fit;
//!    6. capabilities: tools, vision, JSON schema, reasoning, when the request needs them.
//! 2. **Band**: with `q*` the highest predicted quality among the eligible models, the candidates
//!    are the eligible models with `q >= q* × (1 − band)`. [`Mode::Quality`] is band 0,
//!    [`Mode::Balanced`] (the default) 0.02, [`Mode::Cost`] 0.06; a custom band in `[0, 1]` can
//!    replace it. Precedence: the request's band, the request's mode, the deployment's band,
//!    the deployment's mode.
//! 3. **Choice**: the cheapest candidate by [`estimated_cost`] of this request; ties go to the
//!    higher predicted quality, then to the name in byte order. Quality mode is the same rule
//!    with band 0: the cheapest of the models at exactly `q*`. Steps 2 and 3 are the pure
//!    function [`choose_in_band`], which offline evaluation calls too.
//!
//! Since a wider band only adds candidates, a wider band never costs more: Cost ≤ Balanced ≤
//! Quality in estimated cost, for the same request.
//!
//! # Estimates
//!
//! - **Tokens**: [`estimate_tokens`] bounds a text's tokens from above without a tokenizer (each
//!   model has its own); [`estimate_chat_tokens`] adds a per-message overhead. Erring high only
//!   excludes a model whose window was nearly full; erring low sends a request the backend rejects.
//! - **Cost**: `prompt tokens × input_price + output tokens × output_price`, prices in USD per 1M
//!   tokens. Output tokens are `min(max_tokens, expected_output_tokens)` when the request gives
//!   `max_tokens` (a cap bounds the answer but does not predict it), else
//!   `expected_output_tokens` (default [`DEFAULT_EXPECTED_OUTPUT_TOKENS`]). The context-window
//!   check instead reserves the whole `max_tokens`, as the backend does. When the bundle
//!   predicts each model's output length for the prompt ([`Policy::decide_with_output_tokens`]),
//!   that prediction replaces `expected_output_tokens` (the rule is
//!   [`ModelSpec::billed_output_tokens_for`]); the decision lists it in
//!   [`Decision::predicted_output_tokens`].
//!
//! # Validation
//!
//! [`Policy::new`] checks the catalog against the bundle's columns once, so `decide` cannot meet a
//! bad catalog: prices finite and `>= 0`, windows `>= 1`, no duplicate names, every entry and
//! every subset entry a column. A request with an unknown model name, an empty subset or a band
//! outside `[0, 1]` is an error rather than silently ignored: it is almost always a typo.
//!
//! # Example
//!
//! ```
//! use router_policy::{Catalog, Mode, Policy, PolicyDefaults, RouteRequest};
//!
//! let catalog = Catalog::from_toml_str(r#"
//!     [[models]]
//!     name = "large"
//!     input_price = 10.0
//!     output_price = 30.0
//!     context_window = 128000
//!     expected_output_tokens = 300
//!
//!     [[models]]
//!     name = "medium"
//!     input_price = 0.5
//!     output_price = 1.5
//!     context_window = 16000
//!     expected_output_tokens = 300
//!
//!     [[models]]
//!     name = "small"
//!     input_price = 0.15
//!     output_price = 0.6
//!     context_window = 4096
//!     expected_output_tokens = 300
//! "#)?;
//! let columns = vec!["large".to_string(), "medium".to_string(), "small".to_string()];
//! let policy = Policy::new(catalog, columns, PolicyDefaults::default())?;
//!
//! let predictions = [0.90, 0.89, 0.85];
//! let request = RouteRequest::new(1000);
//! // Balanced (the default): threshold 0.9 × 0.98 = 0.882 admits large and medium; medium is
//! // cheaper ($0.00095 against $0.019).
//! let balanced = policy.decide(&predictions, &request)?;
//! assert_eq!(balanced.model, "medium");
//! // Quality: only large has q*.
//! assert_eq!(policy.decide(&predictions, &request.clone().mode(Mode::Quality))?.model, "large");
//! // Cost: threshold 0.846 also admits small ($0.00033).
//! assert_eq!(policy.decide(&predictions, &request.clone().mode(Mode::Cost))?.model, "small");
//! // 1000 prompt tokens + max_tokens 4000 do not fit small's 4096 window.
//! let long = request.clone().mode(Mode::Cost).max_tokens(4000);
//! let decision = policy.decide(&predictions, &long)?;
//! assert_eq!(decision.model, "medium");
//! assert_eq!(decision.excluded["small"].to_string(),
//!            "needs 5000 tokens (prompt + output) but its context window is 4096");
//!
//! println!("{decision}");                                   // a table for people
//! let json = serde_json::to_string(&decision).unwrap();     // the explanation for programs
//! assert!(json.contains(r#""reason":"context_window""#));
//! # Ok::<(), router_policy::PolicyError>(())
//! ```
#![deny(missing_docs)]

mod band;
mod catalog;
mod decision;
mod error;
mod mode;
mod policy;
mod tokens;

pub use band::{choose_in_band, BandCandidate, BandChoice};
pub use catalog::{
    estimated_cost, Capabilities, Capability, Catalog, ModelSpec, DEFAULT_EXPECTED_OUTPUT_TOKENS,
};
pub use decision::{Decision, EligibleModel, Exclusion, TaskGateNote};
pub use error::PolicyError;
pub use mode::Mode;
pub use policy::{Policy, PolicyDefaults, RouteRequest};
pub use tokens::{
    estimate_chat_tokens, estimate_message_tokens, estimate_tokens, MESSAGE_OVERHEAD_TOKENS,
    REPLY_OVERHEAD_TOKENS,
};
