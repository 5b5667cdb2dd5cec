//! The coordinator: connected clients, the state store, and the jobs it runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use shoal_proto::v1;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::registry::Registry;
use crate::engine::round::RoundRecord;
use crate::error::Result;
use crate::report::LogFormat;
use crate::state::{JobRow, JobStatus, Store};

/// Default [`CoordinatorConfig::max_announced_bytes`]: 256 MiB, four Hellos at the 64 MiB
/// message limit, or thousands of clients with a few kilobytes of names each.
pub const DEFAULT_MAX_ANNOUNCED_BYTES: usize = 256 * 1024 * 1024;

/// The largest task or result that travels in chunks, unless `--max-transfer-bytes` says
/// otherwise: a model of a billion parameters in f32.
pub const DEFAULT_MAX_TRANSFER_BYTES: u64 = 4 << 30;

/// Settings of a coordinator process.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Where run folders go (`runs/<job-id>/`).
    pub runs_dir: PathBuf,
    /// How round lines are printed on stdout.
    pub log_format: LogFormat,
    /// Prefix round lines with the job id (useful when several jobs share one log).
    pub prefix_job_id: bool,
    /// Print round lines and summaries on stdout at all.
    pub print_rounds: bool,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// Largest task or result that travels in chunks (a model over the message limit); a job
    /// whose model is larger fails at its start, naming `--max-transfer-bytes`.
    pub max_transfer_bytes: u64,
    /// Data per chunk ([`shoal_proto::chunk::CHUNK_BYTES`]; tests make it small so that small
    /// models travel chunked too).
    pub chunk_bytes: usize,
    /// How long a chunked result may take beyond a second per MiB once its first chunk is in;
    /// a client that takes longer is dropped and gives its place in the intake back.
    pub transfer_grace: std::time::Duration,
    /// How long a new stream may take to send its `Hello`.
    pub hello_timeout: std::time::Duration,
    /// Heartbeat interval announced to clients (the coordinator beats at the same pace).
    pub heartbeat_interval: std::time::Duration,
    /// A client from which nothing arrives for this long is dropped.
    pub heartbeat_timeout: std::time::Duration,
    /// Most clients connected at once; more are refused until one leaves.
    /// Most bytes of dataset descriptions (names of datasets, features and classes) all
    /// connected clients' Hellos may hold together; a Hello past it is refused.
    pub max_announced_bytes: usize,
    pub max_clients: usize,
    /// Largest model (in parameters) a job may train; a tensor on the wire is never decoded
    /// beyond its job's model size.
    pub max_tensor_elements: usize,
    /// Who may connect and who may use the Jobs service.
    pub auth: crate::auth::AuthConfig,
    /// TLS for every service (and mutual TLS when it names a client CA); `None`: plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Failed authentication attempts a peer address may make per minute, each logged; past
    /// them its failures are answered ResourceExhausted, unlogged, for the rest of that minute.
    pub auth_failures_per_minute: u32,
    /// The folder files named in jobs (`evaluation.holdout`) resolve under (`serve --data-dir`);
    /// `None`: jobs may name no files on this host.
    pub data_dir: Option<PathBuf>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            runs_dir: PathBuf::from("runs"),
            log_format: LogFormat::Text,
            prefix_job_id: true,
            print_rounds: true,
            max_message_bytes: 64 * 1024 * 1024,
            max_transfer_bytes: DEFAULT_MAX_TRANSFER_BYTES,
            chunk_bytes: shoal_proto::chunk::CHUNK_BYTES,
            transfer_grace: std::time::Duration::from_secs(30),
            hello_timeout: std::time::Duration::from_secs(10),
            heartbeat_interval: std::time::Duration::from_secs(5),
            heartbeat_timeout: std::time::Duration::from_secs(60),
            max_clients: 1000,
            max_announced_bytes: DEFAULT_MAX_ANNOUNCED_BYTES,
            max_tensor_elements: 16 * 1024 * 1024,
            auth: crate::auth::AuthConfig::default(),
            tls: None,
            auth_failures_per_minute: 10,
            data_dir: None,
        }
    }
}

/// Where an interrupted job goes on from.
#[derive(Debug)]
pub(crate) struct Resume {
    /// The last round completed and checkpointed (0: none).
    pub(crate) round: u32,
    pub(crate) checkpoint: Option<Vec<u8>>,
    /// The rounds recorded up to it.
    pub(crate) records: Vec<RoundRecord>,
}

#[derive(Debug)]
pub(crate) struct JobHandle {
    pub(crate) cancel: CancellationToken,
    pub(crate) events: broadcast::Sender<v1::WatchEvent>,
}

/// Shared state of a coordinator process.
#[derive(Debug)]
pub struct Coordinator {
    pub(crate) registry: Arc<Registry>,
    /// The token sets in force: `config.auth`'s at start, then whatever
    /// [`Coordinator::reload_tokens`] put in.
    pub(crate) tokens: std::sync::RwLock<crate::auth::gate::Tokens>,
    pub(crate) store: Arc<Store>,
    pub(crate) config: CoordinatorConfig,
    pub(crate) jobs: Mutex<HashMap<String, JobHandle>>,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// Failed authentication attempts per peer address.
    pub(crate) failures: crate::auth::FailureBudget,
    /// Held while a `Resume` request checks a job's state and starts it.
    pub(crate) resuming: std::sync::Mutex<()>,
}

impl Coordinator {
    /// A coordinator over `store`. Call [`Coordinator::resume_interrupted`] once it serves, to
    /// go on with the jobs a previous process left unfinished.
    pub fn new(config: CoordinatorConfig, store: Store) -> Result<Arc<Self>> {
        config.auth.check()?;
        Ok(Arc::new(Coordinator {
            registry: Arc::new(
                Registry::new(config.max_clients)
                    .with_stale_after(config.heartbeat_interval * 3)
                    .with_announced_budget(config.max_announced_bytes),
            ),
            store: Arc::new(store),
            jobs: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            failures: crate::auth::FailureBudget::new(config.auth_failures_per_minute),
            resuming: std::sync::Mutex::new(()),
            tokens: std::sync::RwLock::new(crate::auth::gate::Tokens {
                client: config.auth.client_tokens.clone(),
                admin: config.auth.admin_tokens.clone(),
                generation: 0,
            }),
            config,
        }))
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The state store (jobs, rounds, checkpoints, initial parameters).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub(crate) fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobHandle>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops everything: jobs end, client streams close, new clients are refused.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.registry.close();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

pub(crate) fn status_to_wire(s: JobStatus) -> v1::JobStatus {
    match s {
        JobStatus::Queued => v1::JobStatus::Queued,
        JobStatus::Running => v1::JobStatus::Running,
        JobStatus::Finished => v1::JobStatus::Finished,
        JobStatus::Failed => v1::JobStatus::Failed,
        JobStatus::Cancelled => v1::JobStatus::Cancelled,
    }
}

pub(crate) fn job_to_wire(row: &JobRow, last: Option<&RoundRecord>) -> v1::JobInfo {
    v1::JobInfo {
        job_id: row.id.clone(),
        kind: row.kind.clone(),
        status: status_to_wire(row.status) as i32,
        rounds_total: row.rounds_total,
        rounds_done: row.rounds_done,
        error: row.error.clone().unwrap_or_default(),
        spec: row.spec_toml.clone(),
        created_unix_ms: row.created_ms,
        last_round: last.map(|r| round_to_wire(&row.id, r)),
        run_dir: row.run_dir.clone(),
    }
}

pub(crate) fn round_to_wire(job: &str, r: &RoundRecord) -> v1::RoundReport {
    v1::RoundReport {
        job_id: job.to_string(),
        round: r.round,
        rounds_total: r.rounds_total,
        clients: r.clients,
        clients_selected: r.clients_selected,
        train_loss: r.train_loss,
        fed_loss: r.fed_loss,
        fed_accuracy: r.fed_accuracy,
        test_accuracy: r.test_accuracy,
        test_loss: r.test_loss,
        bytes_up: r.bytes_up,
        bytes_down: r.bytes_down,
        seconds: r.seconds,
        rejected: r.rejected,
        rejected_by: r.rejected_by.clone().into_iter().collect(),
        late_by: r.late_by.clone().into_iter().collect(),
        quarantined: r.quarantined.clone(),
        staleness: r.staleness,
    }
}

/// The inverse of `round_to_wire`, for clients of the Jobs API that print round lines.
pub fn round_from_wire(r: &v1::RoundReport) -> RoundRecord {
    RoundRecord {
        staleness: r.staleness,
        round: r.round,
        rounds_total: r.rounds_total,
        clients: r.clients,
        clients_selected: r.clients_selected,
        train_loss: r.train_loss,
        fed_loss: r.fed_loss,
        fed_accuracy: r.fed_accuracy,
        test_accuracy: r.test_accuracy,
        test_loss: r.test_loss,
        bytes_up: r.bytes_up,
        bytes_down: r.bytes_down,
        seconds: r.seconds,
        rejected: r.rejected,
        rejected_by: r.rejected_by.clone().into_iter().collect(),
        late_by: r.late_by.clone().into_iter().collect(),
        quarantined: r.quarantined.clone(),
        silenced: Vec::new(),
    }
}
