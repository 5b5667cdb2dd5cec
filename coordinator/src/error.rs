//! The coordinator's error type and its one mapping to `tonic::Status`.

use shoal_shared::text::{clip, ID_CHARS};
use tonic::{Code, Status};

/// Everything the coordinator's services and job runner can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("job `{}` not found", clip(.0, ID_CHARS))]
    JobNotFound(String),
    #[error("invalid job spec: {0}")]
    InvalidSpec(String),
    #[error("job `{}` has already ended", clip(.0, ID_CHARS))]
    JobEnded(String),
    /// A request that does not fit the job's state (resuming a job that runs or finished).
    #[error("{0}")]
    JobState(String),
    #[error(transparent)]
    Core(#[from] shoal_shared::Error),
    #[error(transparent)]
    Wire(#[from] shoal_proto::WireError),
    #[error("state store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A job cannot go on (quorum lost, no clients, bad data); the reason is shown to the user.
    #[error("{0}")]
    Job(String),
    /// A round fell short of its quorum because selected clients left: a job that checkpoints
    /// waits for clients and runs the round again.
    #[error("{0}")]
    QuorumLost(String),
    #[error("the job was cancelled")]
    Cancelled,
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// A setting, flag or file of the coordinator's own is wrong; the message names it.
    #[error("{0}")]
    Config(String),
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Too many failed attempts from this peer, or too many clients.
    #[error("{0}")]
    Exhausted(String),
}

/// Result alias for the coordinator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::JobNotFound(_) => Code::NotFound,
            Error::InvalidSpec(_) | Error::Wire(_) => Code::InvalidArgument,
            Error::Core(shoal_shared::Error::Unknown { .. })
            | Error::Core(shoal_shared::Error::InvalidValue { .. }) => Code::InvalidArgument,
            Error::JobEnded(_) | Error::JobState(_) => Code::FailedPrecondition,
            Error::Cancelled => Code::Cancelled,
            Error::ShuttingDown => Code::Unavailable,
            Error::Config(_) => Code::InvalidArgument,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Exhausted(_) => Code::ResourceExhausted,
            Error::Core(_)
            | Error::Store(_)
            | Error::Io { .. }
            | Error::Job(_)
            | Error::QuorumLost(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
