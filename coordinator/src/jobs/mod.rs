//! The kinds of job a coordinator runs, one file each. [`JobKind`] is the one list of them (a job
//! spec's `kind`); `run` dispatches a job to its kind.
//!
//! - `train.rs`: federated training of one model, round by round
//! - `fusion.rs`: multimodal fusion variants, each a federated training
//! - `diffusion.rs`: a federated denoiser, then generation and its figures
//! - `automl.rs`: hyperparameter search, each trial a federated training
//! - `lifecycle.rs`: submit, resume, run, record, report; the Jobs API's view of a job
//!
//! Every kind runs its rounds through the same round engine ([`crate::engine::round::JobCtx`]) and the
//! model's server half ([`shoal_shared::models::Server`]).

pub mod automl;
pub mod diffusion;
pub mod fusion;
mod lifecycle;
pub mod train;

use shoal_proto::v1;
use tokio::sync::broadcast;

use crate::coordinator::Resume;
use crate::engine::round::JobCtx;
use crate::error::Result;
use crate::report::{RunFolder, Summary};
use crate::Coordinator;

/// What a job does, as its spec's `kind` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Train,
    Fusion,
    Diffusion,
    Automl,
}

impl JobKind {
    /// Every kind this version runs, for error messages.
    pub const NAMES: &'static str = "\"train\", \"fusion\", \"diffusion\" or \"automl\"";

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Train => "train",
            JobKind::Fusion => "fusion",
            JobKind::Diffusion => "diffusion",
            JobKind::Automl => "automl",
        }
    }
}

impl std::str::FromStr for JobKind {
    /// The error is the message a spec check gives after "`kind` ".
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "train" => JobKind::Train,
            "fusion" => JobKind::Fusion,
            "diffusion" => JobKind::Diffusion,
            "automl" => JobKind::Automl,
            k => return Err(format!("= \"{k}\" is unknown (expected {})", Self::NAMES)),
        })
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Runs a job of `kind` to its summary.
pub(crate) async fn run(
    coord: &Coordinator,
    kind: JobKind,
    ctx: &JobCtx,
    run: &mut RunFolder,
    events: &broadcast::Sender<v1::WatchEvent>,
    resume: Option<Resume>,
) -> Result<Summary> {
    match kind {
        JobKind::Train => coord.train(ctx, run, events, resume).await,
        JobKind::Fusion => coord.fusion(ctx, run, events, resume).await,
        JobKind::Diffusion => coord.diffusion(ctx, run, events, resume).await,
        JobKind::Automl => coord.automl(ctx, run, events, resume).await,
    }
}
