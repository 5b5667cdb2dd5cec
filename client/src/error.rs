//! The client's error type.

/// What can stop a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad flags or data given to the client.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] shoal_shared::Error),
    /// The coordinator refused this client (wrong protocol version, bad credentials); retrying
    /// will not help.
    #[error("rejected by the coordinator: {0}")]
    Rejected(String),
    #[error("cannot reach the coordinator at {url}: {message}")]
    Unreachable { url: String, message: String },
}

/// Result alias for the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
