//! `shoal-coordinator`: the coordinator of a Shoal federation.
//!
//! A [`Coordinator`] keeps the registry of connected clients ([`engine::registry::Registry`]), the
//! state store ([`state::Store`], SQLite) and the running jobs. [`server::serve`] exposes it over
//! gRPC: the `Federation` service (each client's long-lived stream), the `Jobs` service (operators)
//! and gRPC health. Every job runs round after round in the round engine
//! ([`engine::round::JobCtx`]): wait for clients, sample, drive the model kind's server half phase
//! by phase (push tasks, hand it the replies, close at the quorum or deadline), evaluate, record.
//! [`jobs::JobKind`] lists the job kinds, one file each under `jobs/`. [`simulate::simulate`] runs
//! a coordinator and N clients in one process over loopback gRPC.
//!
//! # Layout
//! - `coordinator.rs`: [`Coordinator`], the composition root: its settings and shared state
//!   (registry, store, token sets, running jobs), shutdown, and the Jobs API's wire forms
//! - `server/`: serving and shutdown (`mod.rs`), the gRPC handlers (`services.rs`)
//! - `engine/`: the round engine (`round.rs`, [`engine::round::RoundRecord`]) and the registry of
//!   connected clients and open tasks (`registry.rs`)
//! - `jobs/`: a job's lifecycle (`lifecycle.rs`: submit, resume, run, record, watch, cancel),
//!   [`jobs::JobKind`] and one file per job kind (`train.rs`, `fusion.rs`,
//!   `diffusion.rs`: federated denoiser, generation, figures; `automl.rs`: trials, search, test
//!   once)
//! - `auth/`: TLS, client and admin tokens, the failed-attempt budget, `certs` and `tokens`
//!   (`mod.rs`); the coordinator's checks at the door (`gate.rs`)
//! - `spec.rs`: job specs as written ([`spec::JobSpec`]) and as checked ([`spec::CheckedSpec`],
//!   which carries the [`jobs::JobKind`] with its settings)
//! - `state/`: SQLite state
//! - `report/`: round lines, run folders, summaries (`mod.rs`); charts and `report.html`
//!   (`html.rs`)
//! - `cli/`: the command line, a file per subcommand (`serve`, `simulate`, `partition`, `job ...`,
//!   `study` and `bench`, `health`; `certs` and `tokens` in `mod.rs`)
//! - `simulate.rs`: the one-process federation
//! - `bench/`: apart from the serving code: the `bench` command's measurements (`mod.rs`) and the
//!   studies (`study.rs`: every strategy × partition, the seed forest)
//! - `error.rs`: [`Error`] and its mapping to `tonic::Status`
//!
//! # Example
//! ```
//! use shoal_coordinator::spec::CheckedSpec;
//! let spec = CheckedSpec::from_toml("kind = \"train\"\ndataset = \"digits\"\nrounds = 10\n").unwrap();
//! assert_eq!(spec.clients.fraction_fit, 1.0);
//! assert_eq!(spec.kind().as_str(), "train");
//! ```

pub mod auth;
pub mod bench;
pub mod cli;
pub mod coordinator;
pub mod engine;
pub mod error;
pub mod jobs;
pub mod report;
pub mod server;
pub mod simulate;
pub mod spec;
pub mod state;

pub use coordinator::{Coordinator, CoordinatorConfig};
pub use error::{Error, Result};

#[cfg(test)]
mod autotraits {
    use super::*;

    fn has_autotraits<T: Send + Sync + Unpin>() {}

    #[test]
    fn shared_state_has_autotraits() {
        has_autotraits::<Coordinator>();
        has_autotraits::<engine::registry::Registry>();
        has_autotraits::<state::Store>();
        has_autotraits::<engine::round::JobCtx>();
        has_autotraits::<Error>();
    }
}
