//! `shoal-client`: a Shoal federation client.
//!
//! A client holds private data in a [`Catalog`] (CSV files or its own shard of a built-in dataset),
//! opens one long-lived stream to the coordinator ([`run`] with a [`ClientConfig`]), and answers each
//! task with [`executor::Executor`]: local training or evaluation. Rows never leave the process; only
//! parameters and metrics do. The stream is re-opened with exponential backoff and jitter whenever
//! it breaks.
//!
//! # Layout
//! - `catalog.rs`: local datasets and their train/test split
//! - `connection.rs`: connect, Hello, serve tasks, reconnect
//! - `executor.rs`: one task against local data (weights models, forests, boosting), or through
//!   the trainer for an external model
//! - `trainer.rs`: [`Trainer`], how a Rust program federates its own model
//! - `tls.rs`: TLS and mutual-TLS settings ([`TlsFiles`], [`ClientTls`]) and token files
//! - `attack.rs`: test-only attacker modes ([`Attack`])
//! - `error.rs`: [`ClientError`]
//!
//! # Example
//! ```
//! use shoal_client::{Catalog, ClientConfig};
//! use shoal_shared::data::{builtin::Builtin, partition::Partitioner};
//! let mut catalog = Catalog::new();
//! catalog.add_builtin(Builtin::Iris, &Partitioner::Iid, 0, 3, 42).unwrap();
//! let config = ClientConfig::new("http://127.0.0.1:50051", "client-0", catalog);
//! assert_eq!(config.catalog.infos()[0].name, "iris");
//! // shoal_client::run(config, shutdown_future).await connects and serves tasks.
//! ```

pub mod attack;
pub mod catalog;
pub mod connection;
pub mod error;
pub mod executor;
pub mod tls;
pub mod trainer;

pub use attack::Attack;
pub use catalog::Catalog;
pub use connection::{endpoint, endpoint_with, run, ClientConfig};
pub use error::{ClientError, Result};
pub use tls::{ClientTls, TlsFiles};
pub use trainer::{
    EvaluateConfig, EvaluateOutcome, FitConfig, FitOutcome, InitialConfig, Trainer, TrainerDataset,
    TrainerError,
};

/// Resolves on SIGINT or SIGTERM (what `docker stop` and Kubernetes send). Shared by both binaries.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
