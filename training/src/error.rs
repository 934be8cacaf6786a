//! The crate's one error type.
//!
//! One enum for the whole crate so that a caller (the CLI) handles one type; add a variant per new
//! kind of failure rather than a second enum. Every variant that concerns a file names the file.

use std::path::PathBuf;

/// Everything that can go wrong in dataset import, evaluation and plotting.
///
/// A malformed *row* is not an error: importers skip it and count it (see
/// [`crate::data::SkipReason`]). Errors are for what makes the whole input unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainingError {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A file is readable but not in the expected format as a whole (bad header, not a JSON array).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A format name that [`crate::data::Format`] does not know.
    #[error("unknown dataset format {0:?}; expected one of routerbench, routerdc, llmrouter, routellm, jsonl")]
    UnknownFormat(String),

    /// A model name that the data does not have.
    #[error("unknown model {model:?}; the data has {known:?}")]
    UnknownModel {
        /// The name asked for.
        model: String,
        /// The models the data has.
        known: Vec<String>,
    },

    /// Two models would end up with the same name.
    #[error("model name {0:?} would be used twice")]
    DuplicateModel(String),

    /// A model needs a price (its records carry no cost) but the price list has none for it.
    #[error("no price for model {model:?} in {source_name}")]
    MissingPrice {
        /// The model.
        model: String,
        /// Where the prices came from (a file path, or a description).
        source_name: String,
    },

    /// A record has no cost for a model and no price was given to estimate one.
    #[error(
        "record {record} has no cost for model {model:?} and no price was given to estimate it"
    )]
    MissingCost {
        /// Index of the record.
        record: usize,
        /// The model.
        model: String,
    },

    /// A record has no score for a model that the evaluation needs.
    #[error("record {record} has no score for model {model:?}")]
    MissingScore {
        /// Index of the record.
        record: usize,
        /// The model.
        model: String,
    },

    /// Inputs that do not fit together (shapes, empty sets, values out of range).
    #[error("invalid input: {0}")]
    Invalid(String),

    /// The plot could not be drawn or written.
    #[error("plot {path}: {message}")]
    Plot {
        /// The SVG file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A grader spec that cannot be used (unknown type, bad or missing field, bad formula).
    #[error("grader: {0}")]
    Grader(String),

    /// Grading one answer failed (a template field missing, the judge's reply unparsable or the
    /// judge failing, the python code raising or timing out, a formula error): never a 0 score.
    #[error("{0}")]
    Grading(String),

    /// The encoder or the bundle failed (router-core).
    #[error(transparent)]
    Core(#[from] router_core::CoreError),
    /// A tensor operation failed while training.
    #[error(transparent)]
    Candle(#[from] router_core::candle_core::Error),
    /// The catalog is invalid or a routing decision failed (router-policy).
    #[error(transparent)]
    Policy(#[from] router_policy::PolicyError),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, TrainingError>;
