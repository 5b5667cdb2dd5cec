//! The engine that runs a job's rounds: the registry of connected clients and their open tasks
//! ([`registry::Registry`]), and the round engine ([`round::JobCtx`]) that waits for clients,
//! samples them, drives the model kind's server half phase by phase (dispatching tasks, collecting
//! replies, enforcing deadlines and quorums, striking and quarantining), evaluates and records;
//! and the asynchronous steps of an `[async]` job ([`buffered::Flight`], FedBuff).

pub mod buffered;
pub mod initial;
pub mod registry;
pub mod round;
pub mod spool;
