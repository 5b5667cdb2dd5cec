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
use shoal_shared::models::diffusion::DenoiserSpec;
use tokio::sync::broadcast;

use crate::coordinator::Resume;
use crate::engine::round::JobCtx;
use crate::error::Result;
use crate::report::{RunFolder, Summary};
use crate::spec::AutomlOptions;
use crate::Coordinator;

/// What a job does, as its spec's `kind` names it, with the settings only that kind has. The
/// spec check builds it ([`crate::spec::JobSpec::check`]), so a job kind gets its settings
/// checked and never looks for them in the spec again.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    Train,
    Fusion,
    Diffusion {
        /// The noise-prediction network (the spec's `[model]`).
        denoiser: DenoiserSpec,
        /// Signals generated after training (`[diffusion] samples`); 0 generates none.
        samples: u32,
    },
    Automl(AutomlOptions),
}

impl JobKind {
    /// Every kind this version runs, for error messages.
    pub const NAMES: &'static str = "\"train\", \"fusion\", \"diffusion\" or \"automl\"";

    /// The name a spec's `kind` gives.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Train => "train",
            JobKind::Fusion => "fusion",
            JobKind::Diffusion { .. } => "diffusion",
            JobKind::Automl(_) => "automl",
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Runs a job to its summary, by the kind its checked spec names.
pub(crate) async fn run(
    coord: &Coordinator,
    ctx: &JobCtx,
    run: &mut RunFolder,
    events: &broadcast::Sender<v1::WatchEvent>,
    resume: Option<Resume>,
) -> Result<Summary> {
    match ctx.spec.kind() {
        JobKind::Train => coord.train(ctx, run, events, resume).await,
        JobKind::Fusion => coord.fusion(ctx, run, events, resume).await,
        JobKind::Diffusion { denoiser, samples } => {
            coord
                .diffusion(ctx, denoiser, *samples, run, events, resume)
                .await
        }
        JobKind::Automl(opts) => coord.automl(ctx, opts, run, events, resume).await,
    }
}
