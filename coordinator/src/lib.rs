//! `shoal-coordinator`: the coordinator of a Shoal federation.
//!
//! A [`Coordinator`] keeps the registry of connected clients ([`registry::Registry`]), the state
//! store ([`store::Store`], SQLite) and the running jobs. [`server::serve`] exposes it over gRPC: the
//! `Federation` service (each client's long-lived stream), the `Jobs` service (operators) and gRPC
//! health. Each `train` job runs round after round in the round engine ([`round::JobCtx`]): wait for
//! clients, sample, push Fit tasks, validate updates into the strategy's streaming aggregate,
//! evaluate, record. [`simulate::simulate`] runs a coordinator and N clients in one process over
//! loopback gRPC.
//!
//! # Layout
//! - `automl.rs`: the automl job (trials as federated runs, search, test once)
//! - `bench.rs`: the `bench` command's measurements
//! - `cli.rs`: the command line (`serve`, `simulate`, `partition`, `job ...`)
//! - `coordinator.rs`: [`Coordinator`], job lifecycle, train and fusion jobs
//! - `diffusion.rs`: the diffusion job (federated denoiser, generation, its figures)
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
