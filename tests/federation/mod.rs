//! Coordinator and clients in one process over loopback gRPC, by concern.

mod asynchronous;
mod external;
mod faults;
mod jobs;
mod models;
mod protocol;
mod resume;
mod robustness;

pub(crate) use shoal_proto::v1::{self, coordinator_message, task, task_result};
pub(crate) use shoal_shared::data::builtin::Builtin;
pub(crate) use shoal_shared::data::partition::Partitioner;

pub(crate) use crate::util::{finish, start_client, submit, RawPeer, TestCoordinator};

/// A small digits job; `extra` is appended (sections).
pub(crate) fn digits_job(rounds: u32, min_available: u32, extra: &str) -> String {
    format!(
        "kind = \"train\"\ndataset = \"digits\"\nrounds = {rounds}\n\
         [clients]\nmin_available_clients = {min_available}\nmin_fit_clients = 2\nmin_evaluate_clients = 2\n\
         wait_for_clients_secs = 20\n{extra}"
    )
}
