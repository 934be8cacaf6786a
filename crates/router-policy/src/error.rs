//! The crate's one error type.

use std::collections::BTreeMap;
use std::fmt;

use crate::decision::Exclusion;

/// Everything that can go wrong when loading a catalog, building a [`Policy`](crate::Policy) or
/// deciding a request. Every message names the offending model, field or value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The catalog text is not valid TOML, or a `[[models]]` entry has a wrong type, a missing
    /// required key or an unknown key (a typo such as `input_prize`).
    #[error("invalid catalog: {0}")]
    CatalogToml(String),

    /// A `[[models]]` entry has an empty `name`.
    #[error("invalid catalog: a model entry has an empty name")]
    EmptyModelName,

    /// A price is negative, NaN or infinite.
    #[error(
        "invalid catalog: model `{model}`: {field} must be a finite number >= 0 \
         (USD per 1M tokens), got {value}"
    )]
    InvalidPrice {
        /// The model whose price is wrong.
        model: String,
        /// `input_price` or `output_price`.
        field: &'static str,
        /// The value found.
        value: f64,
    },

    /// A model's `context_window` is 0.
    #[error("invalid catalog: model `{model}`: context_window must be at least 1 token, got 0")]
    ZeroContextWindow {
        /// The model whose window is 0.
        model: String,
    },

    /// Two `[[models]]` entries share a name.
    #[error("invalid catalog: model `{model}` is listed more than once")]
    DuplicateModel {
        /// The repeated name.
        model: String,
    },

    /// The catalog has no `[[models]]` entry at all, so nothing could ever be routed.
    #[error("invalid catalog: it has no [[models]] entries")]
    EmptyCatalog,

    /// The bundle's column names contain a duplicate.
    #[error("invalid bundle columns: `{column}` appears more than once")]
    DuplicateColumn {
        /// The repeated column.
        column: String,
    },

    /// A catalog entry, a subset or an exclude list names a model that the router bundle does
    /// not predict.
    #[error(
        "{origin} names `{model}`, which the router bundle does not predict \
         (bundle columns: {})",
        columns.join(", ")
    )]
    UnknownModel {
        /// The unknown name.
        model: String,
        /// Where it was found, e.g. `the deployment subset`.
        origin: &'static str,
        /// The bundle's columns, to make the typo obvious.
        columns: Vec<String>,
    },

    /// A subset is present but empty: it would exclude every model, which is never what was meant.
    #[error("{origin} is empty: it would exclude every model")]
    EmptySubset {
        /// `the deployment subset` or `the request subset`.
        origin: &'static str,
    },

    /// A band outside `[0, 1]`, or NaN.
    #[error("band must be a fraction in [0, 1], got {band}")]
    InvalidBand {
        /// The value given.
        band: f64,
    },

    /// A routing mode name that is not `quality`, `balanced` or `cost`.
    #[error("unknown routing mode `{0}`: expected `quality`, `balanced` or `cost`")]
    UnknownMode(String),

    /// The prediction vector does not have one entry per bundle column.
    #[error("got {got} predictions but the router bundle has {expected} columns")]
    PredictionLength {
        /// The number of bundle columns.
        expected: usize,
        /// The number of predictions given.
        got: usize,
    },

    /// The predicted output lengths do not have one value per bundle column.
    #[error("got {got} predicted output lengths for {expected} bundle columns")]
    OutputTokensLength {
        /// The number of bundle columns.
        expected: usize,
        /// The number of predicted lengths given.
        got: usize,
    },

    /// Every model was removed by some filter. Carries, for every bundle column, the reason.
    #[error("no eligible model for this request: {}", ExclusionList(excluded))]
    NoEligibleModel {
        /// Each model and the first filter that removed it.
        excluded: BTreeMap<String, Exclusion>,
    },
}

/// Formats `a: reason; b: reason` for the error message.
struct ExclusionList<'a>(&'a BTreeMap<String, Exclusion>);

impl fmt::Display for ExclusionList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("the router bundle has no columns");
        }
        for (i, (model, why)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "`{model}`: {why}")?;
        }
        Ok(())
    }
}
