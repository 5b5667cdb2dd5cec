//! The client's life: connect, say Hello, serve tasks, and reconnect with exponential backoff and
//! jitter whenever the stream breaks, until shut down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use shoal_proto::v1::{
    client_message, coordinator_message, federation_client::FederationClient, ClientMessage,
    CoordinatorMessage, DatasetInfo, Heartbeat, Hello,
};
use shoal_proto::PROTOCOL_VERSION;
use shoal_shared::models::phase::{Capabilities, TaskKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn, Instrument};

use crate::catalog::Catalog;
use crate::error::{ClientError, Result};
use crate::executor::Executor;

/// Settings of one client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `http://host:port` of the coordinator.
    pub coordinator: String,
    /// Unique name of this client in the federation.
    pub name: String,
    pub catalog: Arc<Catalog>,
    /// Test-only: corrupt every update (see [`crate::attack`]).
    pub attack: Option<crate::Attack>,
    /// Tests and studies: hold each training result this long before sending it, as a slower
    /// machine would (stragglers for `study async`). `None`: answer at once.
    pub fit_delay: Option<Duration>,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Give up after this long without a working connection (`None`: never).
    pub give_up_after: Option<Duration>,
    pub max_message_bytes: usize,
    /// Largest task it reassembles from chunks (a model over the message limit); 0: it takes
    /// no chunks.
    pub max_transfer_bytes: u64,
    /// Data per chunk of its results ([`shoal_proto::chunk::CHUNK_BYTES`]; tests make it small).
    pub chunk_bytes: usize,
    /// TLS to the coordinator (`None`: plaintext).
    pub tls: Option<crate::tls::ClientTls>,
    /// This client's token, sent in its Hello (coordinators with `--client-tokens`).
    pub token: Option<String>,
    /// Your own model's training and evaluation: with it, the client also runs jobs whose model
    /// kind is `external` (see [`crate::trainer`]).
    pub trainer: Option<Arc<dyn crate::trainer::Trainer>>,
    /// A channel shared with other clients (`connect_lazy`; it reconnects on its own): many
    /// clients in one process then open their streams over a few HTTP/2 connections instead of
    /// one TCP connection each (`simulate` with thousands of clients, load tests). `None`: this
    /// client connects on its own.
    pub channel: Option<Channel>,
}

impl ClientConfig {
    pub fn new(coordinator: impl Into<String>, name: impl Into<String>, catalog: Catalog) -> Self {
        ClientConfig {
            coordinator: coordinator.into(),
            name: name.into(),
            catalog: Arc::new(catalog),
            attack: None,
            fit_delay: None,
            initial_backoff: Duration::from_millis(200),
            // Rounds last seconds: a client back on the network should not sleep through several
            // of them. Full jitter still spreads a restarted coordinator's reconnect storm.
            max_backoff: Duration::from_secs(10),
            give_up_after: None,
            max_message_bytes: 64 * 1024 * 1024,
            max_transfer_bytes: DEFAULT_MAX_TRANSFER_BYTES,
            chunk_bytes: shoal_proto::chunk::CHUNK_BYTES,
            tls: None,
            token: None,
            trainer: None,
            channel: None,
        }
    }

    /// A client that runs only `trainer`'s model (external jobs) on the datasets it announces.
    pub fn with_trainer(
        coordinator: impl Into<String>,
        name: impl Into<String>,
        trainer: Arc<dyn crate::trainer::Trainer>,
    ) -> Self {
        ClientConfig {
            trainer: Some(trainer),
            ..ClientConfig::new(coordinator, name, Catalog::new())
        }
    }

    /// The datasets its Hello announces: the catalog's, then the trainer's.
    pub fn dataset_infos(&self) -> Vec<DatasetInfo> {
        let mut infos = self.catalog.infos();
        if let Some(t) = &self.trainer {
            infos.extend(t.datasets().into_iter().map(|d| DatasetInfo {
                name: d.name,
                train_examples: d.train_examples,
                test_examples: d.test_examples,
                feature_names: d.feature_names,
                class_names: d.class_names,
            }));
        }
        infos
    }

    /// What its Hello says it runs: Shoal's own model kinds when it holds data of its own, the
    /// `external` kind (fit and evaluate) when it has a trainer.
    pub fn capabilities(&self) -> Capabilities {
        let mut caps = if self.catalog.infos().is_empty() {
            Capabilities::default()
        } else {
            Capabilities::builtin()
        };
        if let Some(trainer) = &self.trainer {
            caps.model_kinds.insert("external".into());
            caps.task_kinds.extend([TaskKind::Fit, TaskKind::Evaluate]);
            if trainer.offers_initial_parameters() {
                caps.task_kinds.insert(TaskKind::Parameters);
            }
        }
        caps
    }
}

/// The largest task a client reassembles from chunks unless told otherwise
/// (`--max-transfer-bytes`): a model of a billion parameters in f32.
pub const DEFAULT_MAX_TRANSFER_BYTES: u64 = 4 << 30;

/// Clients that share one HTTP/2 connection (`ClientConfig::channel`): each has its own stream
/// on it, and hyper's server takes 200 concurrent streams per connection by default.
pub const SESSIONS_PER_CONNECTION: usize = 64;

/// Longest a connection attempt may take, name lookup and TLS included. A lookup begun while the
/// network is down can otherwise hang for the resolver's whole retry schedule (10 s with glibc's
/// defaults) after the network is back.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for the coordinator's answer to Hello (its own Hello timeout is 10 s).
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);

/// Normalises a coordinator address (`host:port` gets `http://`) into a plaintext endpoint;
/// anything unparsable is an error that names it.
pub fn endpoint(url: &str) -> Result<Endpoint> {
    endpoint_with(url, None)
}

/// [`endpoint`] with TLS when `tls` is given: `host:port` then gets `https://`, and an
/// explicit `http://` is refused rather than silently sent in the clear.
pub fn endpoint_with(url: &str, tls: Option<&crate::tls::ClientTls>) -> Result<Endpoint> {
    let url = if url.contains("://") {
        url.to_string()
    } else if tls.is_some() {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    };
    if tls.is_some() && url.starts_with("http://") {
        return Err(ClientError::Config(format!(
            "`{url}`: TLS settings (--ca) are given, so use an https:// address"
        )));
    }
    if tls.is_none() && url.starts_with("https://") {
        return Err(ClientError::Config(format!(
            "`{url}`: an https:// address needs --ca (the CA of the coordinator's certificate)"
        )));
    }
    let mut e = Endpoint::from_shared(url.clone())
        .map(|e| {
            e.connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true)
        })
        .map_err(|e| ClientError::Config(format!("invalid coordinator address `{url}`: {e}")))?;
    if let Some(t) = tls {
        e = e
            .tls_config(t.config())
            .map_err(|e| ClientError::Config(format!("TLS settings for `{url}`: {e}")))?;
    }
    Ok(e)
}

/// Runs the client until `shutdown` resolves (Ok), the coordinator rejects it, or
/// `give_up_after` passes without a connection.
pub async fn run(config: ClientConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    if config.dataset_infos().is_empty() {
        return Err(ClientError::Config(
            "the client holds no dataset (neither in its catalog nor from its trainer)".into(),
        ));
    }
    let endpoint = endpoint_with(&config.coordinator, config.tls.as_ref())?;
    let span = tracing::info_span!("client", client = %config.name);
    // Lives across reconnects: per-job client state (SCAFFOLD's c_i) survives a dropped stream.
    let executor = Arc::new(Executor::new(
        config.catalog.clone(),
        config.attack,
        config.trainer.clone(),
    ));
    async move {
        tokio::pin!(shutdown);
        let mut backoff = config.initial_backoff;
        let mut down_since = tokio::time::Instant::now();
        loop {
            let outcome = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                o = session(&config, &endpoint, &executor) => o,
            };
            match outcome {
                Ok(()) => {
                    info!("coordinator closed the stream; reconnecting");
                    backoff = config.initial_backoff;
                    down_since = tokio::time::Instant::now();
                }
                Err(Session::Rejected(reason)) => return Err(ClientError::Rejected(reason)),
                Err(Session::Lost { connected, message }) => {
                    if connected {
                        backoff = config.initial_backoff;
                        down_since = tokio::time::Instant::now();
                    }
                    if let Some(limit) = config.give_up_after {
                        if down_since.elapsed() >= limit {
                            return Err(ClientError::Unreachable {
                                url: config.coordinator.clone(),
                                message,
                            });
                        }
                    }
                    warn!(coordinator = %config.coordinator, "connection failed: {message}; retrying in {backoff:?}");
                }
            }
            // Full jitter keeps a restarted coordinator from being hit by every client at once.
            let wait = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(config.max_backoff);
        }
    }
    .instrument(span)
    .await
}

enum Session {
    Rejected(String),
    Lost { connected: bool, message: String },
}

fn lost(connected: bool, message: impl Into<String>) -> Session {
    Session::Lost {
        connected,
        message: message.into(),
    }
}

/// One connection: Hello, Welcome, then tasks until the stream ends.
async fn session(
    config: &ClientConfig,
    endpoint: &Endpoint,
    executor: &Arc<Executor>,
) -> std::result::Result<(), Session> {
    let channel: Channel = match &config.channel {
        Some(shared) => shared.clone(),
        None => tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
            .await
            .map_err(|_| {
                lost(
                    false,
                    format!("no connection within {CONNECT_TIMEOUT:?} (name lookup, TCP or TLS)"),
                )
            })?
            .map_err(|e| lost(false, error_chain(&e)))?,
    };
    let mut client = FederationClient::new(channel)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let (tx, rx) = mpsc::channel::<ClientMessage>(16);
    let caps = config.capabilities();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: config.name.clone(),
        token: config.token.clone().unwrap_or_default(),
        datasets: config.dataset_infos(),
        model_kinds: caps.model_kinds.iter().cloned().collect(),
        task_kinds: caps
            .task_kinds
            .iter()
            .map(|k| k.as_str().to_string())
            .collect(),
        max_message_bytes: config.max_message_bytes as u64,
        max_transfer_bytes: config.max_transfer_bytes,
    };
    tx.send(ClientMessage {
        msg: Some(client_message::Msg::Hello(hello)),
    })
    .await
    .map_err(|_| lost(false, "outbound stream closed"))?;
    // Results over a chunk go in chunks once the Welcome says the coordinator takes them; each
    // result's chunks follow each other, nothing of the queue between them.
    let chunk = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let outbound = {
        let chunk = chunk.clone();
        ReceiverStream::new(rx).flat_map(move |m| {
            let size = chunk.load(std::sync::atomic::Ordering::Acquire);
            futures::stream::iter(if size == 0 {
                vec![m]
            } else {
                shoal_proto::chunk::split_client(m, size)
            })
        })
    };
    let handshake = async {
        let mut inbound = client
            .connect(outbound)
            .await
            .map_err(|s| lost(false, s.message().to_string()))?
            .into_inner();
        let first = inbound.message().await;
        Ok::<_, Session>((inbound, first))
    };
    let (mut inbound, first) = tokio::time::timeout(WELCOME_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            lost(
                false,
                format!("no answer to Hello within {WELCOME_TIMEOUT:?}"),
            )
        })??;
    let heartbeat_every = match first {
        Ok(Some(msg)) => match msg.msg {
            Some(coordinator_message::Msg::Welcome(w)) => {
                info!(coordinator = %config.coordinator, "connected");
                if w.max_transfer_bytes > 0 {
                    let theirs = match w.max_message_bytes {
                        0 => shoal_shared::models::phase::DEFAULT_MESSAGE_BYTES,
                        n => n,
                    };
                    let size = shoal_proto::chunk::chunk_size(
                        config.chunk_bytes,
                        theirs.min(config.max_message_bytes as u64),
                    );
                    chunk.store(size, std::sync::atomic::Ordering::Release);
                }
                Duration::from_millis(u64::from(w.heartbeat_interval_ms.max(500)))
            }
            Some(coordinator_message::Msg::Reject(r)) => return Err(Session::Rejected(r.reason)),
            _ => return Err(lost(false, "coordinator did not answer Hello with Welcome")),
        },
        Ok(None) => return Err(lost(false, "stream closed before Welcome")),
        Err(s) => return Err(lost(false, s.message().to_string())),
    };
    let mut chunks = shoal_proto::chunk::Assembler::default();
    let mut ticker = tokio::time::interval(heartbeat_every);
    ticker.tick().await;
    // The coordinator beats too: silence for three intervals means it is gone.
    let silence = heartbeat_every * 3;
    let idle = tokio::time::sleep(silence);
    tokio::pin!(idle);
    // Tasks run on blocking threads, at most one per core; the rest wait their turn.
    let slots = Arc::new(tokio::sync::Semaphore::new(
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    ));
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let hb = ClientMessage { msg: Some(client_message::Msg::Heartbeat(Heartbeat { unix_ms: unix_ms() })) };
                // A full queue means results are on their way, which says as much as a beat.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(hb) {
                    return Err(lost(true, "outbound stream closed"));
                }
            }
            _ = &mut idle => {
                return Err(lost(true, format!("nothing from the coordinator for {silence:?}")));
            }
            msg = inbound.message() => {
                idle.as_mut().reset(tokio::time::Instant::now() + silence);
                match msg {
                    Ok(Some(m)) => {
                        let m = match m.msg {
                            Some(coordinator_message::Msg::Chunk(c)) => {
                                match chunks.push(c, config.max_transfer_bytes, "this client's --max-transfer-bytes") {
                                    Ok(None) => continue,
                                    Ok(Some(whole)) => match shoal_proto::chunk::decode_coordinator(whole) {
                                        Ok(m) => m,
                                        Err(e) => return Err(lost(true, e.to_string())),
                                    },
                                    Err(e) => return Err(lost(true, e.to_string())),
                                }
                            }
                            _ if chunks.is_open() => return Err(lost(true, shoal_proto::chunk::ChunkError::Interleaved.to_string())),
                            other => CoordinatorMessage { msg: other },
                        };
                        match m.msg {
                        Some(coordinator_message::Msg::Task(task)) => {
                            debug!(task = %task.task_id, "task received");
                            tokio::spawn(serve_task(task, executor.clone(), tx.clone(), slots.clone(), config.fit_delay));
                        }
                        Some(coordinator_message::Msg::Reject(r)) => return Err(Session::Rejected(r.reason)),
                        Some(coordinator_message::Msg::Notice(n)) => {
                            let clip = shoal_shared::text::clip;
                            warn!(job = %clip(&n.job_id, shoal_shared::text::ID_CHARS), "coordinator: {}", clip(&n.message, 4 * shoal_shared::text::TEXT_CHARS));
                        }
                        Some(coordinator_message::Msg::Heartbeat(_)) | Some(coordinator_message::Msg::Welcome(_)) | Some(coordinator_message::Msg::Chunk(_)) | None => {}
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(lost(true, s.message().to_string())),
                }
            }
        }
    }
}

/// Runs one task when a slot is free and sends its result; a task whose deadline has passed is
/// dropped (the coordinator no longer waits for it), and a task that panics is answered with an
/// error so the coordinator need not wait for the deadline.
async fn serve_task(
    task: shoal_proto::v1::Task,
    executor: Arc<Executor>,
    tx: mpsc::Sender<ClientMessage>,
    slots: Arc<tokio::sync::Semaphore>,
    fit_delay: Option<Duration>,
) {
    let Ok(_permit) = slots.acquire_owned().await else {
        return;
    };
    let fits = matches!(task.kind, Some(shoal_proto::v1::task::Kind::Fit(_)));
    if task.deadline_unix_ms != 0 && unix_ms() > task.deadline_unix_ms {
        warn!(task = %task.task_id, "task expired while queued; skipped");
        return;
    }
    let (task_id, job_id, round) = (task.task_id.clone(), task.job_id.clone(), task.round);
    let result = match tokio::task::spawn_blocking(move || executor.execute(&task)).await {
        Ok(r) => r,
        // The task panicked (a bug): the coordinator hears why instead of waiting for the
        // deadline, and the client keeps serving.
        Err(e) => {
            warn!(task = %task_id, "task failed: {e}");
            shoal_proto::v1::TaskResult {
                task_id,
                job_id,
                round,
                outcome: Some(shoal_proto::v1::task_result::Outcome::Error(format!(
                    "internal error in the client: {e}"
                ))),
            }
        }
    };
    if let (true, Some(delay)) = (fits, fit_delay) {
        tokio::time::sleep(delay).await;
    }
    let _ = tx
        .send(ClientMessage {
            msg: Some(client_message::Msg::Result(result)),
        })
        .await;
}

/// An error and its causes on one line (tonic's transport errors hide the useful part in
/// sources), each said once: [`shoal_shared::text::error_chain`].
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    shoal_shared::text::error_chain(e)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
