//! The one error type of `shoal-shared`.

use std::path::PathBuf;

/// Everything that can go wrong in the pure core. Each variant carries enough context (file, line,
/// column, field, expected vs found) for a one-line message a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A CSV file is malformed. `line` is 1-based and counts the header; `column` names the column.
    #[error("{path}:{line}: {message}")]
    Csv {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// A value given by the user (flag, spec field, scheme string) is not acceptable.
    #[error("invalid {what}: {message}")]
    InvalidValue { what: String, message: String },
    /// An unknown name (dataset, model, strategy, partition scheme).
    #[error("unknown {what} `{name}` (expected one of: {expected})")]
    Unknown {
        what: &'static str,
        name: String,
        expected: String,
    },
    /// Tensors or datasets whose shapes do not line up.
    #[error("shape mismatch in {what}: expected {expected}, found {found}")]
    Shape {
        what: String,
        expected: String,
        found: String,
    },
    /// A tensor holds NaN or infinity.
    #[error("non-finite value in {0}")]
    NonFinite(String),
    /// Data that cannot serve the request (too few rows for the clients asked, a class missing, ...).
    #[error("{0}")]
    Data(String),
}

/// Result alias used throughout `shoal-shared`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::InvalidValue`].
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidValue {
            what: what.into(),
            message: message.into(),
        }
    }
}
