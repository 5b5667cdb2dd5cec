//! `shoal-shared`: the pure, synchronous core of Shoal.
//!
//! Nothing here touches the network or an async runtime; the coordinator and the client call into it
//! (through `spawn_blocking` for heavy work). Principal types:
//!
//! - [`data::Dataset`]: an `f32` feature matrix with class labels and names; loaded from CSV
//!   ([`data::csv::load_csv`]) or built in ([`data::builtin::Builtin`]), split
//!   ([`data::stratified_split`]) and partitioned over clients ([`data::partition::Partitioner`]).
//! - [`tensor::Weights`]: a model's parameters as named tensors, the unit that crosses the wire.
//! - [`models::ModelSpec`], the one list of model kinds, and [`models::Kind`]; the algorithm
//!   boundary in [`models::phase`]: a kind's server half ([`models::phase::ServerHalf`], a phase
//!   state machine) and client half ([`models::Kind::handle`]), sans I/O.
//! - [`models::sgd::Model`] and [`models::sgd::Classifier`]: weights models;
//!   [`models::sgd::train_local`] runs minibatch SGD on a client's shard.
//! - [`strategy::StrategySpec`] and [`strategy::Strategy`]: eleven server-side strategies
//!   (FedAvg and its server-optimiser variants, FedProx, robust median / trimmed mean / Krum,
//!   SCAFFOLD), fed one update at a time through a [`strategy::Aggregator`].
//! - [`models::forest::Forest`]: a federated random forest (linfa-trees fits, pooled as a
//!   versioned blob).
//! - [`models::gbdt::Ensemble`] and [`models::gbdt::TreeGrower`]: lossless federated histogram
//!   gradient boosting.
//! - [`fusion::FeatureView`]: how a multimodal fusion variant sees the rows.
//! - [`models::diffusion::NoiseSchedule`]: DDPM schedules and forward / reverse steps;
//!   [`models::diffusion::DenoiserModel`]: the noise-prediction network as a federated model.
//! - [`automl::SearchSpace`] and [`automl::Tpe`]: hyperparameter search.
//! - [`compress::Compression`]: update compression (f16, bf16, unbiased int8, top-k with
//!   [`compress::ErrorFeedback`]).
//! - [`plot`]: SVG line and bar charts.
//!
//! # Layout
//! - `data/`: datasets, CSV, built-in datasets, splits, partitioners
//! - `tensor.rs`: named tensors and their arithmetic
//! - `models/`: one folder per model kind (`sgd/`: logreg and mlp, `diffusion/`, `forest/`,
//!   `gbdt/`), each with its server and client half; `phase.rs`: the boundary
//! - `strategy/`: aggregation strategies
//! - `fusion.rs`: multimodal fusion views and variants
//! - `automl.rs`: search spaces, grid/random/halving/TPE proposals
//! - `seed.rs`: seed derivation
//! - `plot.rs`: charts
//! - `error.rs`: the crate's error type
//!
//! # Example
//! ```
//! use shoal_shared::data::partition::Partitioner;
//! let scheme: Partitioner = "dirichlet:0.5".parse().unwrap();
//! let labels: Vec<usize> = (0..200).map(|i| i % 4).collect();
//! let parts = scheme.partition(&labels, 4, 5, 42).unwrap();
//! assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 200);
//! ```

pub mod automl;
pub mod compress;
pub mod data;
pub mod error;
pub mod fusion;
pub mod models;
pub mod plot;
pub mod seed;
pub mod spool;
pub mod strategy;
pub mod tensor;
pub mod text;

pub use error::{Error, Result};

#[cfg(test)]
mod autotraits {
    /// Types that cross tasks and threads must stay `Send + Sync + Unpin`.
    fn has_autotraits<T: Send + Sync + Unpin>() {}

    #[test]
    fn core_types_have_autotraits() {
        has_autotraits::<crate::data::Dataset>();
        has_autotraits::<crate::tensor::Weights>();
        has_autotraits::<crate::models::sgd::LogReg>();
        has_autotraits::<Box<dyn crate::models::sgd::Model>>();
        has_autotraits::<crate::strategy::Strategy>();
        has_autotraits::<crate::strategy::Aggregator>();
        has_autotraits::<crate::Error>();
    }
}
