//! `shoal-coordinator`: the coordinator of a Shoal federation.
//!
//! A [`Coordinator`] keeps the registry of connected clients ([`registry::Registry`]), the state
//! store ([`store::Store`], SQLite) and the running jobs. [`server::serve`] exposes it over gRPC: the
//! `Federation` service (each client's long-lived stream), the `Jobs` service (operators) and gRPC
//! health. Every job runs round after round in the round engine ([`round::JobCtx`]): wait for
//! clients, sample, drive the model kind's server half phase by phase (push tasks, hand it the
//! replies, close at the quorum or deadline), evaluate, record. [`jobs::JobKind`] lists the job
//! kinds, one file each under `jobs/`. [`simulate::simulate`] runs a coordinator and N clients in one process over
//! loopback gRPC.
//!
//! # Layout
//! - `jobs/`: [`jobs::JobKind`] and one file per job kind (`train.rs`, `fusion.rs`,
//!   `diffusion.rs`: federated denoiser, generation, figures; `automl.rs`: trials, search, test
//!   once)
//! - `bench.rs`: the `bench` command's measurements
//! - `cli.rs`: the command line (`serve`, `simulate`, `partition`, `job ...`)
//! - `coordinator.rs`: [`Coordinator`], job lifecycle (submit, run, resume, cancel, watch)
//! - `round.rs`: the round engine and [`round::RoundRecord`]
//! - `registry.rs`: connected clients and open tasks
//! - `services.rs`: the gRPC handlers
//! - `security.rs`: TLS, client and admin tokens, the failed-attempt budget, `certs` and `tokens`
//! - `server.rs`: serving and shutdown
//! - `spec.rs`: job specs ([`spec::JobSpec`])
//! - `store.rs`: SQLite state
//! - `report.rs`: round lines, run folders, summaries
//! - `html.rs`: charts and `report.html`
//! - `simulate.rs`: the one-process federation
//! - `study.rs`: the non-IID study (every strategy × partition, table and chart)
//! - `error.rs`: [`Error`] and its mapping to `tonic::Status`
//!
//! # Example
//! ```
//! use shoal_coordinator::spec::JobSpec;
//! let spec = JobSpec::from_toml("kind = \"train\"\ndataset = \"digits\"\nrounds = 10\n").unwrap();
//! assert_eq!(spec.clients.fraction_fit, 1.0);
//! ```

pub mod bench;
pub mod cli;
pub mod coordinator;
pub mod error;
pub mod html;
pub mod jobs;
pub mod registry;
pub mod report;
pub mod round;
pub mod security;
pub mod server;
pub mod services;
pub mod simulate;
pub mod spec;
pub mod store;
pub mod study;

pub use coordinator::{Coordinator, CoordinatorConfig};
pub use error::{Error, Result};

#[cfg(test)]
mod autotraits {
    use super::*;

    fn has_autotraits<T: Send + Sync + Unpin>() {}

    #[test]
    fn shared_state_has_autotraits() {
        has_autotraits::<Coordinator>();
        has_autotraits::<registry::Registry>();
        has_autotraits::<store::Store>();
        has_autotraits::<round::JobCtx>();
        has_autotraits::<Error>();
    }
}
