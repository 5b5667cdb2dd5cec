//! The gRPC services: `Federation` (clients' streams) and `Jobs` (operators).
//!
//! Handlers translate between wire and domain and nothing more; errors become `tonic::Status`
//! through the one `From<Error>` mapping in `error.rs`.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use prost::Message;
use shoal_proto::v1::{
    client_message, coordinator_message, federation_server::Federation, jobs_server::Jobs,
    ClientMessage, CoordinatorMessage, Reject, Welcome,
};
use shoal_proto::{v1, PROTOCOL_VERSION};
use shoal_shared::models::phase::Capabilities;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn, Instrument};

use crate::coordinator::Coordinator;
use crate::engine::registry::RegisterError;
use crate::error::Error;
use crate::spec::CheckedSpec;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The `Federation` service.
#[derive(Debug, Clone)]
pub struct FederationService {
    coord: Arc<Coordinator>,
}

impl FederationService {
    pub fn new(coord: Arc<Coordinator>) -> Self {
        FederationService { coord }
    }
}

fn reject(reason: String) -> Response<BoxStream<CoordinatorMessage>> {
    let msg = CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Reject(Reject {
            reason,
            coordinator_protocol_version: PROTOCOL_VERSION,
        })),
    };
    Response::new(Box::pin(futures::stream::iter([Ok(msg)])))
}

#[tonic::async_trait]
impl Federation for FederationService {
    type ConnectStream = BoxStream<CoordinatorMessage>;

    async fn connect(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let peer = request.remote_addr();
        let cert_name = peer_cert_name(&request);
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.coord.config.hello_timeout, inbound.message()).await;
        let hello = match first {
            Err(_) => {
                warn!(?peer, "no Hello within the timeout");
                return Err(Status::deadline_exceeded(format!(
                    "expected Hello within {:?}",
                    self.coord.config.hello_timeout
                )));
            }
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(Status::cancelled("stream closed before Hello")),
            Ok(Ok(Some(ClientMessage {
                msg: Some(client_message::Msg::Hello(h)),
            }))) => h,
            Ok(Ok(Some(_))) => {
                self.coord
                    .auth_failed(peer, "Federation", "first message was not Hello")?;
                return Ok(reject("the first message must be Hello".into()));
            }
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            warn!(?peer, client = %hello.client_name, theirs = hello.protocol_version, "protocol version mismatch");
            return Ok(reject(format!(
                "protocol version mismatch: client speaks {}, coordinator speaks {} (run client and coordinator releases that speak the same version; docs/PROTOCOL.md lists what changed)",
                hello.protocol_version, PROTOCOL_VERSION
            )));
        }
        if let Err(reason) = check_hello(&hello) {
            self.coord
                .auth_failed(peer, "Federation", &format!("Hello refused: {reason}"))?;
            return Ok(reject(reason));
        }
        let caps = match Capabilities::parse(&hello.model_kinds, &hello.task_kinds) {
            Ok(caps) => Capabilities {
                max_message_bytes: hello.max_message_bytes,
                max_transfer_bytes: hello.max_transfer_bytes,
                ..caps
            },
            Err(e) => {
                let reason = e.to_string();
                self.coord
                    .auth_failed(peer, "Federation", &format!("Hello refused: {reason}"))?;
                return Ok(reject(reason));
            }
        };
        let checked = match self.coord.authenticate_client(&hello, cert_name.as_deref()) {
            Ok(generation) => generation,
            Err(reason) => {
                self.coord.auth_failed(
                    peer,
                    "Federation",
                    &format!("client `{}`: {reason}", hello.client_name.trim()),
                )?;
                return Ok(reject(format!("unauthenticated: {reason}")));
            }
        };
        let name = hello.client_name.trim().to_string();
        // What a second check needs (the datasets go to the registry).
        let again = v1::Hello {
            client_name: hello.client_name.clone(),
            token: hello.token.clone(),
            ..Default::default()
        };
        let datasets: Vec<String> = hello.datasets.iter().map(|d| d.name.clone()).collect();
        // Tasks over this size go in chunks, to a client that takes them.
        let chunk = (caps.max_transfer_bytes > 0).then(|| {
            shoal_proto::chunk::chunk_size(
                self.coord.config.chunk_bytes,
                caps.message_limit()
                    .min(self.coord.config.max_message_bytes as u64),
            )
        });
        let reg = match self
            .coord
            .registry
            .register(&name, hello.datasets, caps, peer)
        {
            Ok(reg) => reg,
            Err(RegisterError::Closed) => return Err(Error::ShuttingDown.into()),
            Err(e @ (RegisterError::Full { .. } | RegisterError::Budget { .. })) => {
                warn!(?peer, "{e}");
                return Err(Error::Exhausted(e.to_string()).into());
            }
            Err(e @ RegisterError::NameTaken { .. }) => {
                warn!(?peer, "{e}");
                // Retryable: the same client reconnecting before its old stream was noticed gone.
                return Err(Status::already_exists(e.to_string()));
            }
        };
        let (session, rx) = (reg.session, reg.rx);
        if self.coord.tokens_reloaded_since(checked) {
            if let Err(reason) = self.coord.authenticate_client(&again, cert_name.as_deref()) {
                self.coord.registry.unregister(&name, session);
                return Ok(reject(format!("unauthenticated: {reason}")));
            }
        }
        let every = self.coord.config.heartbeat_interval;
        // A peer silent this long is gone (a pulled cable sends no FIN); HTTP/2 keep-alive
        // catches dead connections, this catches live connections to a hung process.
        let idle_limit = self.coord.config.heartbeat_timeout;
        let shutdown = self.coord.shutdown_token().clone();
        tokio::spawn(heartbeats(reg.weak, every));
        info!(client = %name, ?peer, ?datasets, "client connected");

        // Reader: results and heartbeats until the stream ends; then the client is gone.
        let registry = self.coord.registry.clone();
        let transfer_cap = self
            .coord
            .config
            .max_transfer_bytes
            .max(self.coord.config.max_message_bytes as u64);
        let transfer_grace = self.coord.config.transfer_grace;
        let span = tracing::info_span!("client", client = %name);
        let reader_name = name.clone();
        tokio::spawn(
            async move {
                let mut refusals = RefusalLog::new();
                let mut chunks = shoal_proto::chunk::Assembler::default();
                let intake = registry.intake();
                // A chunked result holds a place in the intake from its first chunk until its
                // round has taken it in, and must arrive in time (see `transfer_time`).
                let mut hold = None;
                let mut transfer_due: Option<tokio::time::Instant> = None;
                loop {
                    let wait = transfer_due.map_or(idle_limit, |d| {
                        d.saturating_duration_since(tokio::time::Instant::now())
                            .min(idle_limit)
                    });
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        next = tokio::time::timeout(wait, inbound.message()) => next,
                    };
                    let Ok(next) = next else {
                        if transfer_due.is_some_and(|d| d <= tokio::time::Instant::now()) {
                            warn!("a chunked result did not arrive in time; dropping the client");
                        } else {
                            warn!("nothing received for {idle_limit:?}; dropping the client");
                        }
                        break;
                    };
                    match next {
                        Ok(Some(msg)) => {
                            registry.seen(&reader_name, session);
                            let mut bytes = msg.encoded_len() as u64;
                            let msg = match msg.msg {
                                Some(client_message::Msg::Chunk(c)) => {
                                    // A client may send in chunks only a result it owes, and
                                    // no larger than that task's model.
                                    let first = !chunks.is_open();
                                    let total = c.total_bytes;
                                    let limit = if first {
                                        registry
                                            .result_bound(&reader_name, session)
                                            .min(transfer_cap)
                                    } else {
                                        u64::MAX
                                    };
                                    match chunks.push(
                                        c,
                                        limit,
                                        "the largest result this client owes",
                                    ) {
                                        Ok(None) => {
                                            if first {
                                                let permit = tokio::select! {
                                                    _ = shutdown.cancelled() => break,
                                                    p = intake.clone().acquire_owned() => p,
                                                };
                                                hold = permit.ok();
                                                transfer_due = Some(
                                                    tokio::time::Instant::now()
                                                        + transfer_time(total, transfer_grace),
                                                );
                                            }
                                            continue;
                                        }
                                        Ok(Some(whole)) => {
                                            transfer_due = None;
                                            bytes = whole.len() as u64;
                                            match shoal_proto::chunk::decode_client(whole) {
                                                Ok(m) => m,
                                                Err(e) => {
                                                    warn!("{e}; dropping the client");
                                                    break;
                                                }
                                            }
                                        }
                                        Err(e) => {
                                            warn!("{e}; dropping the client");
                                            break;
                                        }
                                    }
                                }
                                _ if chunks.is_open() => {
                                    warn!(
                                        "{}; dropping the client",
                                        shoal_proto::chunk::ChunkError::Interleaved
                                    );
                                    break;
                                }
                                other => ClientMessage { msg: other },
                            };
                            match msg.msg {
                                Some(client_message::Msg::Result(r)) => {
                                    if let Err(e) = registry.complete_holding(
                                        &reader_name,
                                        session,
                                        r,
                                        bytes,
                                        hold.take(),
                                    ) {
                                        refusals.note(&e);
                                    }
                                }
                                Some(client_message::Msg::Heartbeat(_)) => {}
                                Some(client_message::Msg::Hello(_))
                                | Some(client_message::Msg::Chunk(_))
                                | None => {
                                    warn!("unexpected message after Hello; ignored")
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            info!("stream ended: {}", status.message());
                            break;
                        }
                    }
                }
                refusals.finish();
                registry.unregister(&reader_name, session);
                info!("client disconnected");
            }
            .instrument(span),
        );

        let welcome = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Welcome(Welcome {
                client_id: name,
                protocol_version: PROTOCOL_VERSION,
                heartbeat_interval_ms: self.coord.config.heartbeat_interval.as_millis() as u32,
                max_transfer_bytes: self.coord.config.max_transfer_bytes,
                max_message_bytes: self.coord.config.max_message_bytes as u64,
            })),
        };
        let shutdown = self.coord.shutdown_token().clone().cancelled_owned();
        // Each message's chunks follow each other: nothing of the queue comes between them.
        let outbound = ReceiverStream::new(rx).flat_map(move |m| {
            futures::stream::iter(match (m, chunk) {
                (Ok(msg), Some(size)) => shoal_proto::chunk::split_coordinator(msg, size)
                    .into_iter()
                    .map(Ok)
                    .collect(),
                (m, _) => vec![m],
            })
        });
        let out = futures::stream::iter([Ok(welcome)])
            .chain(outbound)
            .take_until(shutdown);
        Ok(Response::new(Box::pin(out)))
    }
}

/// How long a chunked result of `bytes` may take to arrive once its first chunk is in: `grace`
/// (30 s unless a test says otherwise) and a second per MiB (a slow link), so that a peer that
/// stops half way gives its place in the intake back.
fn transfer_time(bytes: u64, grace: std::time::Duration) -> std::time::Duration {
    grace + std::time::Duration::from_secs(bytes / (1 << 20))
}

/// The name in the peer's TLS client certificate, when it presented one.
fn peer_cert_name<T>(request: &Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    crate::auth::cert_name(certs.first()?.as_ref())
}

/// Bounds on what a Hello may announce, so a peer cannot size the model or the registry at will.
pub const MAX_DATASETS: usize = 64;
pub const MAX_FEATURES: usize = 100_000;
pub const MAX_CLASSES: usize = 10_000;
pub const MAX_NAME_LEN: usize = 256;

fn check_name(what: &str, s: &str) -> Result<(), String> {
    if s.trim().is_empty() || s.len() > MAX_NAME_LEN || s.chars().any(char::is_control) {
        return Err(format!(
            "{what} must be 1 to {MAX_NAME_LEN} printable characters"
        ));
    }
    Ok(())
}

/// Checks a Hello's fields; the error is the Reject reason.
pub fn check_hello(hello: &v1::Hello) -> Result<(), String> {
    check_name("client_name", &hello.client_name)?;
    if hello.datasets.is_empty() || hello.datasets.len() > MAX_DATASETS {
        return Err(format!(
            "a client must announce 1 to {MAX_DATASETS} datasets, found {}",
            hello.datasets.len()
        ));
    }
    for d in &hello.datasets {
        check_name("dataset name", &d.name)?;
        if d.feature_names.is_empty() || d.feature_names.len() > MAX_FEATURES {
            return Err(format!(
                "dataset `{}`: 1 to {MAX_FEATURES} features allowed, found {}",
                d.name,
                d.feature_names.len()
            ));
        }
        if d.class_names.is_empty() || d.class_names.len() > MAX_CLASSES {
            return Err(format!(
                "dataset `{}`: 1 to {MAX_CLASSES} classes allowed, found {} (is the label column right?)",
                d.name,
                d.class_names.len()
            ));
        }
        if d.train_examples == 0 || d.test_examples == 0 {
            return Err(format!(
                "dataset `{}`: needs train and test examples (found {} and {})",
                d.name, d.train_examples, d.test_examples
            ));
        }
        for n in d.feature_names.iter().chain(&d.class_names) {
            if n.len() > MAX_NAME_LEN {
                return Err(format!(
                    "dataset `{}`: a feature or class name is longer than {MAX_NAME_LEN} bytes",
                    d.name
                ));
            }
        }
    }
    Ok(())
}

/// A session's refused results in the log: the first few one by one, then a summary at most
/// once a minute and when the session ends, so that a peer sending thousands of bad results
/// costs a few log lines. (Each refusal still counts where it counts: the job's strikes.)
struct RefusalLog {
    logged: u32,
    held: u64,
    last: String,
    since: std::time::Instant,
}

impl RefusalLog {
    /// Refusals logged one by one per session.
    const EACH: u32 = 5;
    const SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    fn new() -> Self {
        RefusalLog {
            logged: 0,
            held: 0,
            last: String::new(),
            since: std::time::Instant::now(),
        }
    }

    fn note(&mut self, e: &crate::engine::registry::ResultRejected) {
        if self.logged < Self::EACH {
            self.logged += 1;
            // A late answer is a slow client, not a fault (an asynchronous job's last tasks
            // all come back late).
            if matches!(e, crate::engine::registry::ResultRejected::Late(_)) {
                tracing::info!("result refused: {e}");
            } else {
                warn!("result refused: {e}");
            }
            if self.logged == Self::EACH {
                warn!("further refused results from this client are summarised");
            }
            return;
        }
        self.held += 1;
        self.last = e.to_string();
        if self.since.elapsed() >= Self::SUMMARY_EVERY {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.held > 0 {
            warn!(
                refused = self.held,
                "more results refused (the last: {})", self.last
            );
            self.held = 0;
        }
        self.since = std::time::Instant::now();
    }

    fn finish(&mut self) {
        self.flush();
    }
}

/// Sends a heartbeat down a client's stream every `every` until its session is dropped.
async fn heartbeats(
    weak: tokio::sync::mpsc::WeakSender<Result<CoordinatorMessage, Status>>,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(tx) = weak.upgrade() else { return };
        let beat = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Heartbeat(v1::Heartbeat {
                unix_ms: crate::engine::round::unix_ms(),
            })),
        };
        // A full queue already tells the client the coordinator is alive: skip this beat.
        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(beat)) {
            return;
        }
    }
}

/// The `Jobs` service.
#[derive(Debug, Clone)]
pub struct JobsService {
    coord: Arc<Coordinator>,
}

impl JobsService {
    pub fn new(coord: Arc<Coordinator>) -> Self {
        JobsService { coord }
    }
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::JobInfo>, Status> {
        self.coord.authorize_admin(&request)?;
        let req = request.into_inner();
        let spec = match req.format.as_str() {
            "" | "toml" => CheckedSpec::from_toml(&req.spec)?,
            "json" => CheckedSpec::from_json(&req.spec)?,
            other => {
                return Err(Error::InvalidSpec(format!(
                    "unknown spec format `{other}` (expected toml or json)"
                ))
                .into())
            }
        };
        let initial = match &req.initial_parameters {
            Some(p) => Some(
                shoal_proto::weights_from_wire(p, self.coord.config.max_tensor_elements)
                    .map_err(|e| Error::InvalidSpec(format!("initial_parameters: {e}")))?,
            ),
            None => None,
        };
        let row = self.coord.submit_with_initial(spec, initial)?;
        Ok(Response::new(self.coord.job_info(&row.id)?))
    }

    async fn get(&self, request: Request<v1::GetRequest>) -> Result<Response<v1::JobInfo>, Status> {
        self.coord.authorize_admin(&request)?;
        Ok(Response::new(
            self.coord.job_info(&request.into_inner().job_id)?,
        ))
    }

    async fn list(
        &self,
        request: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ListResponse>, Status> {
        self.coord.authorize_admin(&request)?;
        Ok(Response::new(v1::ListResponse {
            jobs: self.coord.list()?,
        }))
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::JobInfo>, Status> {
        self.coord.authorize_admin(&request)?;
        Ok(Response::new(
            self.coord.cancel(&request.into_inner().job_id)?,
        ))
    }

    async fn resume(
        &self,
        request: Request<v1::ResumeRequest>,
    ) -> Result<Response<v1::JobInfo>, Status> {
        self.coord.authorize_admin(&request)?;
        Ok(Response::new(
            self.coord.resume_job(&request.into_inner().job_id)?,
        ))
    }

    type WatchStream = BoxStream<v1::WatchEvent>;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.coord.authorize_admin(&request)?;
        let id = request.into_inner().job_id;
        let (history, live) = self.coord.watch(&id)?;
        let last_round = history
            .iter()
            .filter_map(|e| match &e.event {
                Some(v1::watch_event::Event::Round(r)) => Some(r.round),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let head = futures::stream::iter(history.into_iter().map(Ok));
        let Some(rx) = live else {
            return Ok(Response::new(Box::pin(head)));
        };
        let coord = self.coord.clone();
        // Live events after the history; a lagging watcher is told how many reports it missed.
        let tail = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |item| {
            let coord = coord.clone();
            let id = id.clone();
            async move {
                match item {
                    Ok(ev) => match &ev.event {
                        Some(v1::watch_event::Event::Round(r)) if r.round <= last_round => None,
                        _ => Some(Ok(ev)),
                    },
                    Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                        warn!(job = %id, missed = n, "watcher lagged");
                        coord.job_info(&id).ok().map(|_| {
                            Err(Status::data_loss(format!(
                                "watcher fell behind by {n} reports; run `job status`"
                            )))
                        })
                    }
                }
            }
        });
        // End the stream after the job's final event.
        let mut done = false;
        let tail = tail.take_while(move |item| {
            let keep = !done;
            if matches!(
                item,
                Ok(v1::WatchEvent {
                    event: Some(v1::watch_event::Event::Finished(_))
                })
            ) {
                done = true;
            }
            futures::future::ready(keep)
        });
        let shutdown = self.coord.shutdown_token().clone().cancelled_owned();
        Ok(Response::new(Box::pin(
            head.chain(tail).take_until(shutdown),
        )))
    }
}
