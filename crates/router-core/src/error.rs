use std::path::PathBuf;

/// Everything that can go wrong while loading or running a router.
///
/// Errors about files always name the file, so a broken bundle can be fixed without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file did not parse into what it should hold.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A bundle file is present and parses, but its content is wrong (a shape, a name, a version).
    #[error("{path}: {message}")]
    Bundle {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A tokenizer could not be loaded or failed on an input.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizer's own message.
        message: String,
    },
    /// A file could not be found in, or fetched into, the Hugging Face hub cache.
    #[error("hub {repo}@{revision}: {file}: {message}")]
    Hub {
        /// The repository id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The file that was wanted.
        file: String,
        /// Why it could not be had.
        message: String,
    },
    /// Invalid arguments from the caller (e.g. an empty batch where one is required).
    #[error("{0}")]
    Invalid(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl CoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bundle(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        CoreError::Bundle {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, CoreError>;
