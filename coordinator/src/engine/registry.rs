//! The registry of connected clients and of tasks awaiting their results.
//!
//! Each connected client owns one outbound channel (its half of the `Connect` stream). A task is
//! dispatched by registering a one-shot slot under its task id and pushing it down that channel; the
//! client's result fills the slot. When a client's stream ends, its slots are dropped, so whoever
//! waits on them learns at once that the client is gone: a vanished client never hangs a round.
//!
//! A full channel is flow control, not failure: many jobs may send a client tasks at once (a burst
//! larger than the channel), and a [`Delivery`] then waits its turn for room, first come, first
//! served across jobs, until the client's stream takes it or its round gives up on it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use shoal_proto::v1::{
    self, coordinator_message, CoordinatorMessage, DatasetInfo, Task, TaskResult,
};
use shoal_shared::models::phase::Capabilities;
use shoal_shared::text::{clip, ID_CHARS};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

/// Outbound half of a client's stream.
pub type Outbound = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// Expired task ids remembered to recognise late answers.
const MAX_EXPIRED: usize = 65_536;

/// Longest job id kept for counting refused results.
const MAX_NAME_CHARS: usize = 128;

/// Depth of each client's outbound queue; tasks are few and large, so a small queue suffices:
/// tasks beyond it wait for room in their [`Delivery`], not in the queue.
const OUTBOUND_DEPTH: usize = 16;

/// A dispatched task: waits for room on the client's stream when that is busy, then for the
/// result. Resolves to `None` when the client left (or its session was replaced) before
/// answering.
pub struct Delivery {
    sent: Arc<std::sync::atomic::AtomicBool>,
    wait: futures::future::BoxFuture<'static, Option<Arrived>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Whether the task has gone onto the client's stream (a task still waiting for room when
    /// its phase closes was never sent: its client was busy, not silent).
    pub fn sent(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.sent.clone()
    }
}

impl std::future::Future for Delivery {
    type Output = Option<Arrived>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.wait.as_mut().poll(cx)
    }
}

/// A connected client as the round engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientView {
    pub name: String,
    /// Shared with the registry: a view costs no copy of what the Hello announced (a Hello may
    /// be tens of MiB, and jobs take views every phase).
    pub datasets: Arc<[DatasetInfo]>,
    /// The model and task kinds its Hello listed.
    pub caps: Arc<Capabilities>,
}

impl ClientView {
    pub fn dataset(&self, name: &str) -> Option<&DatasetInfo> {
        self.datasets.iter().find(|d| d.name == name)
    }
}

/// A result as it arrived, with its size on the wire.
#[derive(Debug)]
pub struct Arrived {
    pub result: TaskResult,
    pub bytes: u64,
    /// A chunked result's place in the intake ([`Registry::intake`]), given back when the
    /// result is dropped: once its round has taken it in.
    pub hold: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A newly registered session.
#[derive(Debug)]
pub struct Registered {
    pub session: u64,
    /// What the coordinator pushes to this client; ends when the session is dropped.
    pub rx: mpsc::Receiver<Result<CoordinatorMessage, Status>>,
    /// For side traffic (heartbeats) that must not keep a dropped session's stream open.
    pub weak: mpsc::WeakSender<Result<CoordinatorMessage, Status>>,
}

/// Why a result was not accepted by the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultRejected {
    #[error("no open task `{}` (unknown, already answered, or past its deadline)", clip(.0, ID_CHARS))]
    UnknownTask(String),
    #[error("task `{}` was sent to another client, not to `{client}`", clip(.task, ID_CHARS))]
    WrongClient { task: String, client: String },
    /// An answer after its round phase closed (or after an asynchronous job stopped waiting for
    /// it, at its end): refused, but no sign of bad faith (a slow or partitioned client sends
    /// these), so it does not count towards quarantine.
    #[error("task `{}` came late: its phase had closed, or its job no longer waited for it", clip(.0, ID_CHARS))]
    Late(String),
}

/// Chunked results received or taken in at once: one arriving while another is added to the
/// round's sums.
pub const INTAKE: usize = 2;

/// What a result may carry beyond its task's model (loss, counts, ids, a small forest).
const RESULT_SLACK_BYTES: u64 = 1 << 20;

/// Why a task could not be dispatched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undeliverable {
    #[error("client `{0}` is gone or not reading its stream")]
    Gone(String),
    /// The session was replaced, between selection and dispatch, by one that does not list the
    /// task's kinds: it is not sent a task it said it cannot run.
    #[error("client `{client}` does not run {task} tasks of `{model}` models (its new session does not list them)")]
    Unable {
        client: String,
        model: String,
        task: &'static str,
    },
    /// The task is over the client's message limit and it takes no chunks, or over its
    /// transfer limit (a session that replaced the one selection saw may say less).
    #[error("client `{client}`: {why}")]
    TooLarge { client: String, why: String },
}

/// Why a client could not register.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("the coordinator is shutting down")]
    Closed,
    #[error("the coordinator already serves its maximum of {max} clients (--max-clients)")]
    Full { max: usize },
    #[error("the datasets the connected clients announced take {held} bytes and this Hello's {more}, over the coordinator's budget of {max} bytes for all Hellos together (--max-announced-bytes)")]
    Budget {
        held: usize,
        more: usize,
        max: usize,
    },
    #[error("a client named `{name}` is already connected (from {addr:?}) and was heard from {quiet_ms} ms ago; pick another --name, or retry once that session has ended")]
    NameTaken {
        name: String,
        addr: Option<SocketAddr>,
        quiet_ms: u128,
    },
}

#[derive(Debug)]
struct Entry {
    session: u64,
    datasets: Arc<[DatasetInfo]>,
    /// What `datasets` weigh against the registry's budget ([`announced_bytes`]).
    bytes: usize,
    caps: Arc<Capabilities>,
    addr: Option<SocketAddr>,
    tx: Outbound,
    /// When this session last sent anything (Hello, heartbeat, result).
    last_seen: Instant,
}

#[derive(Debug)]
struct Pending {
    client: String,
    session: u64,
    slot: oneshot::Sender<Arrived>,
    /// The largest result this task may bring back in chunks: about as large as the model the
    /// task carried.
    result_bytes: u64,
}

/// Most jobs whose refused results are counted at once: the job id of a refused result comes
/// from the sender, so a hostile peer must not grow this map without bound.
const MAX_REFUSED_JOBS: usize = 256;

#[derive(Debug, Default)]
struct Inner {
    clients: BTreeMap<String, Entry>,
    pending: HashMap<String, Pending>,
    /// Results refused here (unknown, duplicate, late, another client's task), by the job they
    /// name and the client that sent them; the job's round engine takes them each round.
    refused: HashMap<String, BTreeMap<String, u32>>,
    /// The late ones among them.
    late: HashMap<String, BTreeMap<String, u32>>,
    /// Tasks whose phase closed unanswered (most recent last), to tell a late answer from an
    /// unknown or repeated one.
    expired: std::collections::VecDeque<String>,
    expired_set: std::collections::HashSet<String>,
    next_session: u64,
    closed: bool,
    /// Sum of the connected clients' [`announced_bytes`].
    held_bytes: usize,
}

/// Connected clients and open tasks.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    max_clients: usize,
    /// Most bytes of dataset descriptions all connected clients' Hellos may hold together.
    max_announced_bytes: usize,
    /// A session silent this long may be replaced by a new Hello under its name (see
    /// [`Registry::register`]).
    stale_after: Duration,
    /// Bumped on every connect and disconnect, so waiters wake without polling.
    changed: watch::Sender<u64>,
    /// Places for chunked results being received or taken in (see [`Registry::intake`]).
    intake: Arc<tokio::sync::Semaphore>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(usize::MAX)
    }
}

impl Registry {
    /// A registry that holds at most `max_clients` sessions at once and never replaces a session
    /// (see [`Registry::with_stale_after`]).
    pub fn new(max_clients: usize) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            max_clients,
            max_announced_bytes: usize::MAX,
            stale_after: Duration::MAX,
            changed: watch::channel(0).0,
            intake: Arc::new(tokio::sync::Semaphore::new(INTAKE)),
        }
    }

    /// Places for chunked (large) results: a session takes one at a result's first chunk and its
    /// round gives it back once it has taken the result in. Other sessions' chunks wait unread
    /// meanwhile (HTTP/2 flow control holds them at the sender), so however many clients answer
    /// at once, the coordinator holds at most [`INTAKE`] large results in transit.
    pub fn intake(&self) -> Arc<tokio::sync::Semaphore> {
        self.intake.clone()
    }

    /// Lets a new Hello replace a session that has sent nothing for `stale_after`. A live client
    /// beats every heartbeat interval, so only a dead one goes this quiet; the coordinator sets
    /// three intervals, the same silence after which a client itself gives its stream up.
    pub fn with_stale_after(mut self, stale_after: Duration) -> Self {
        self.stale_after = stale_after;
        self
    }

    /// Refuses a Hello whose datasets would take the connected clients' descriptions past
    /// `max` bytes in all: each client's description is kept once, so this bounds what all of
    /// them cost the coordinator.
    pub fn with_announced_budget(mut self, max: usize) -> Self {
        self.max_announced_bytes = max;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Registers a client under `name`. A name holds one session. A second Hello under a name
    /// whose session is still heard from is refused (two processes configured with one name must
    /// not take turns); one whose session has been silent for `stale_after` replaces it, and the
    /// old session's open tasks are dropped. That is a client coming back from a network cut:
    /// its old connection carries nothing, but TCP may not say so for minutes.
    pub fn register(
        &self,
        name: &str,
        datasets: Vec<DatasetInfo>,
        caps: Capabilities,
        addr: Option<SocketAddr>,
    ) -> Result<Registered, RegisterError> {
        let (tx, rx) = mpsc::channel(OUTBOUND_DEPTH);
        let weak = tx.downgrade();
        let session = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(RegisterError::Closed);
            }
            if let Some(e) = inner.clients.get(name) {
                let quiet = e.last_seen.elapsed();
                if quiet < self.stale_after {
                    return Err(RegisterError::NameTaken {
                        name: name.to_string(),
                        addr: e.addr,
                        quiet_ms: quiet.as_millis(),
                    });
                }
                tracing::info!(
                    client = name,
                    quiet_ms = quiet.as_millis(),
                    "a new session replaces a silent one"
                );
                remove_client(&mut inner, name);
            }
            if inner.clients.len() >= self.max_clients {
                return Err(RegisterError::Full {
                    max: self.max_clients,
                });
            }
            let bytes = announced_bytes(&datasets);
            if inner.held_bytes.saturating_add(bytes) > self.max_announced_bytes {
                return Err(RegisterError::Budget {
                    held: inner.held_bytes,
                    more: bytes,
                    max: self.max_announced_bytes,
                });
            }
            inner.held_bytes += bytes;
            inner.next_session += 1;
            let session = inner.next_session;
            inner.clients.insert(
                name.to_string(),
                Entry {
                    session,
                    datasets: datasets.into(),
                    bytes,
                    caps: Arc::new(caps),
                    addr,
                    tx,
                    last_seen: Instant::now(),
                },
            );
            session
        };
        self.bump();
        Ok(Registered { session, rx, weak })
    }

    /// Notes that `name`'s session `session` sent something.
    pub fn seen(&self, name: &str, session: u64) {
        if let Some(e) = self.lock().clients.get_mut(name) {
            if e.session == session {
                e.last_seen = Instant::now();
            }
        }
    }

    /// Removes a client's session (no-op when a newer session has replaced it).
    pub fn unregister(&self, name: &str, session: u64) {
        let removed = {
            let mut inner = self.lock();
            let current = inner.clients.get(name).map(|e| e.session) == Some(session);
            if let Some(e) = current.then(|| inner.clients.remove(name)).flatten() {
                inner.held_bytes -= e.bytes;
            }
            drop_pending_of(&mut inner, name, session);
            current
        };
        if removed {
            self.bump();
        }
    }

    /// Ends `name`'s session, whichever it is (its credential was revoked), and lets its open
    /// tasks go; returns whether there was one.
    pub fn drop_client(&self, name: &str) -> bool {
        let removed = remove_client(&mut self.lock(), name);
        if removed {
            self.bump();
        }
        removed
    }

    /// Connected clients holding `dataset`, sorted by name (a stable order keeps seeded sampling
    /// reproducible).
    pub fn available(&self, dataset: &str) -> Vec<ClientView> {
        self.lock()
            .clients
            .iter()
            .filter(|(_, e)| e.datasets.iter().any(|d| d.name == dataset))
            .map(|(name, e)| ClientView {
                name: name.clone(),
                datasets: e.datasets.clone(),
                caps: e.caps.clone(),
            })
            .collect()
    }

    /// Number of connected clients.
    pub fn len(&self) -> usize {
        self.lock().clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Peer address of a client, for logs.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.lock().clients.get(name).and_then(|e| e.addr)
    }

    /// A receiver that changes whenever a client connects or leaves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Queues `task` on `client`'s stream and returns its [`Delivery`]. Pushes at once when the
    /// stream has room; when it is full (a burst of tasks from many jobs, or a client busy
    /// reading), the delivery waits for room in turn with the other waiting tasks. A busy client
    /// is never taken for a gone one: only a closed stream is ([`Undeliverable::Gone`]), and a
    /// client that never reads again holds up only the tasks sent to it, which their phase's
    /// deadline ends like any straggler's.
    pub fn dispatch(&self, client: &str, task: Task) -> Result<Delivery, Undeliverable> {
        let (slot, rx) = oneshot::channel();
        let task_id = task.task_id.clone();
        let task_model = task.model.as_ref().map(|m| m.kind.clone());
        let task_kind = task.kind.as_ref().map(shoal_proto::tasks::task_kind);
        let size = task.encoded_len() as u64;
        // An update is the model it came from, give or take its small fields.
        let model_bytes = task
            .parameters
            .as_ref()
            .map_or(0, |p| p.encoded_len() as u64)
            + match &task.kind {
                Some(v1::task::Kind::Fit(f)) => {
                    f.control.as_ref().map_or(0, |c| c.encoded_len() as u64)
                }
                _ => 0,
            };
        let result_bytes = model_bytes + model_bytes / 100 + RESULT_SLACK_BYTES;
        let msg = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Task(task)),
        };
        let mut inner = self.lock();
        let entry = inner
            .clients
            .get(client)
            .ok_or_else(|| Undeliverable::Gone(client.to_string()))?;
        // Selection checked the capabilities of the session it saw; a session that took the name
        // over since may list others.
        let model = task_model.as_deref().unwrap_or_default();
        if let Some(kind) = task_kind {
            if !entry.caps.runs(model, &[kind]) {
                return Err(Undeliverable::Unable {
                    client: client.to_string(),
                    model: model.to_string(),
                    task: kind.as_str(),
                });
            }
        }
        if let Some(why) = entry.caps.misfit_size(size) {
            return Err(Undeliverable::TooLarge {
                client: client.to_string(),
                why,
            });
        }
        let session = entry.session;
        let queued = match entry.tx.try_send(Ok(msg)) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(msg)) => Some((entry.tx.clone(), msg)),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Undeliverable::Gone(client.to_string()))
            }
        };
        inner.pending.insert(
            task_id,
            Pending {
                client: client.to_string(),
                session,
                slot,
                result_bytes,
            },
        );
        let sent = Arc::new(std::sync::atomic::AtomicBool::new(queued.is_none()));
        let flag = sent.clone();
        let wait = Box::pin(async move {
            let mut rx = rx;
            if let Some((tx, msg)) = queued {
                // Tokio's channel hands freed room to its waiters in the order they started
                // waiting, and a `try_send` cannot take room a waiter is owed: concurrent jobs
                // share a busy client in turn. The slot is watched meanwhile: a session dropped
                // or replaced ends the wait.
                tokio::select! {
                    biased;
                    r = &mut rx => return r.ok(),
                    room = tx.reserve() => match room {
                        Ok(room) => {
                            room.send(msg);
                            flag.store(true, std::sync::atomic::Ordering::Release);
                        }
                        Err(_) => return None,
                    },
                }
            }
            rx.await.ok()
        });
        Ok(Delivery { sent, wait })
    }

    /// Tells `client` something about `job` on its stream ([`v1::Notice`]); best effort: a client
    /// that is gone or not reading misses it (a notice never takes a task's place).
    pub fn notify(&self, client: &str, job: &str, message: String) {
        let inner = self.lock();
        let Some(entry) = inner.clients.get(client) else {
            return;
        };
        // Leave room for tasks: a queue more than half full gets no notices.
        if entry.tx.capacity() <= OUTBOUND_DEPTH / 2 {
            return;
        }
        let msg = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Notice(v1::Notice {
                job_id: job.to_string(),
                message,
            })),
        };
        let _ = entry.tx.try_send(Ok(msg));
    }

    /// The largest chunked result `client`'s session may send now: that of the largest task it
    /// owes a result for (0: it owes none, so it may send no chunks).
    pub fn result_bound(&self, client: &str, session: u64) -> u64 {
        let inner = self.lock();
        inner
            .pending
            .values()
            .filter(|p| p.client == client && p.session == session)
            .map(|p| p.result_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Delivers a result from `client`'s session to whoever waits for it.
    pub fn complete(
        &self,
        client: &str,
        session: u64,
        result: TaskResult,
        bytes: u64,
    ) -> Result<(), ResultRejected> {
        self.complete_holding(client, session, result, bytes, None)
    }

    /// [`Registry::complete`] for a result that holds a place in the intake until its round
    /// drops it.
    pub fn complete_holding(
        &self,
        client: &str,
        session: u64,
        result: TaskResult,
        bytes: u64,
        hold: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(), ResultRejected> {
        let mut inner = self.lock();
        let task = result.task_id.clone();
        let late = !inner.pending.contains_key(&task) && inner.expired_set.remove(&task);
        let refusal = match inner.pending.get(&task) {
            None if late => Some(ResultRejected::Late(task.clone())),
            None => Some(ResultRejected::UnknownTask(task.clone())),
            Some(p) if p.client != client || p.session != session => {
                Some(ResultRejected::WrongClient {
                    task: task.clone(),
                    client: client.to_string(),
                })
            }
            Some(_) => None,
        };
        if let Some(e) = refusal {
            let job: String = result.job_id.chars().take(MAX_NAME_CHARS).collect();
            if inner.refused.contains_key(&job) || inner.refused.len() < MAX_REFUSED_JOBS {
                if matches!(e, ResultRejected::Late(_)) {
                    *inner
                        .late
                        .entry(job.clone())
                        .or_default()
                        .entry(client.to_string())
                        .or_default() += 1;
                }
                *inner
                    .refused
                    .entry(job)
                    .or_default()
                    .entry(client.to_string())
                    .or_default() += 1;
            }
            return Err(e);
        }
        if let Some(p) = inner.pending.remove(&task) {
            // The waiter may have given up (deadline); then the result is simply dropped.
            let _ = p.slot.send(Arrived {
                result,
                bytes,
                hold,
            });
        }
        Ok(())
    }

    /// The results refused here since the last call that named job `job`, by client: all of
    /// them, and the late ones among them.
    pub fn take_refused(&self, job: &str) -> (BTreeMap<String, u32>, BTreeMap<String, u32>) {
        let mut inner = self.lock();
        let all = inner.refused.remove(job).unwrap_or_default();
        let late = inner.late.remove(job).unwrap_or_default();
        (all, late)
    }

    /// Forgets open tasks (after a round's deadline), so late results are refused.
    pub fn forget(&self, task_ids: &[String]) {
        let mut inner = self.lock();
        for id in task_ids {
            if inner.pending.remove(id).is_some() {
                inner.expired.push_back(id.clone());
                inner.expired_set.insert(id.clone());
            }
        }
        while inner.expired.len() > MAX_EXPIRED {
            if let Some(old) = inner.expired.pop_front() {
                inner.expired_set.remove(&old);
            }
        }
    }

    /// Drops every client (ending their streams) and refuses new ones: the shutdown path.
    pub fn close(&self) {
        {
            let mut inner = self.lock();
            inner.closed = true;
            inner.clients.clear();
            inner.held_bytes = 0;
            inner.pending.clear();
        }
        self.bump();
    }
}

/// What a client's dataset descriptions cost the coordinator, roughly as held in memory: every
/// string's bytes plus a fixed overhead per string and per dataset.
pub fn announced_bytes(datasets: &[DatasetInfo]) -> usize {
    const PER_STRING: usize = 24;
    datasets
        .iter()
        .map(|d| {
            let names = d.feature_names.iter().chain(&d.class_names);
            64 + d.name.len() + names.map(|s| s.len() + PER_STRING).sum::<usize>()
        })
        .sum()
}

/// Removes `name`'s session, whichever it is, and its open tasks. Dropping the entry drops the
/// only sender of its stream, which ends it.
fn remove_client(inner: &mut Inner, name: &str) -> bool {
    match inner.clients.remove(name) {
        Some(e) => {
            inner.held_bytes -= e.bytes;
            drop_pending_of(inner, name, e.session);
            true
        }
        None => false,
    }
}

fn drop_pending_of(inner: &mut Inner, client: &str, session: u64) {
    inner
        .pending
        .retain(|_, p| !(p.client == client && p.session == session));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(name: &str) -> Vec<DatasetInfo> {
        vec![DatasetInfo {
            name: name.into(),
            ..Default::default()
        }]
    }

    fn task(id: &str) -> Task {
        Task {
            task_id: id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn result_reaches_the_waiter_only_from_the_right_client() {
        let r = Registry::default();
        let a = r
            .register("a", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        let (sa, mut rxa) = (a.session, a.rx);
        let sb = r
            .register("b", ds("d"), Capabilities::builtin(), None)
            .unwrap()
            .session;
        let slot = r.dispatch("a", task("t1")).unwrap();
        assert!(rxa.recv().await.is_some(), "task pushed down a's stream");
        let res = TaskResult {
            task_id: "t1".into(),
            ..Default::default()
        };
        assert!(matches!(
            r.complete("b", sb, res.clone(), 1),
            Err(ResultRejected::WrongClient { .. })
        ));
        r.complete("a", sa, res.clone(), 7).unwrap();
        assert_eq!(slot.await.unwrap().bytes, 7);
        // A duplicate is refused.
        assert!(matches!(
            r.complete("a", sa, res, 7),
            Err(ResultRejected::UnknownTask(_))
        ));
        // Both refusals are counted against their senders, under the job they name.
        let (refused, late) = r.take_refused("");
        assert_eq!(refused.get("a"), Some(&1));
        assert_eq!(refused.get("b"), Some(&1));
        assert!(late.is_empty());
        assert!(r.take_refused("").0.is_empty(), "taken once");
        // An answer after its task expired is late, not unknown.
        let _slot = r.dispatch("a", task("t2")).unwrap();
        r.forget(&["t2".to_string()]);
        let res2 = TaskResult {
            task_id: "t2".into(),
            ..Default::default()
        };
        assert!(matches!(
            r.complete("a", sa, res2.clone(), 1),
            Err(ResultRejected::Late(_))
        ));
        assert!(matches!(
            r.complete("a", sa, res2, 1),
            Err(ResultRejected::UnknownTask(_))
        ));
        let (refused, late) = r.take_refused("");
        assert_eq!((refused.get("a"), late.get("a")), (Some(&2), Some(&1)));
    }

    /// Dispatch checks the capabilities of the session it finds, not those selection saw: a
    /// session that took the name over and lists other kinds is not sent the task.
    #[tokio::test]
    async fn a_task_goes_only_to_a_session_that_runs_its_kinds() {
        let r = Registry::default();
        let caps = Capabilities::parse(
            &["external".to_string()],
            &["fit".to_string(), "evaluate".to_string()],
        )
        .unwrap();
        let mut reg = r.register("a", ds("d"), caps, None).unwrap();
        let of = |model: &str, kind: shoal_proto::v1::task::Kind| Task {
            task_id: format!("{model}-task"),
            model: Some(shoal_proto::v1::ModelSpec {
                kind: model.into(),
                ..Default::default()
            }),
            kind: Some(kind),
            ..Default::default()
        };
        let sketch = of(
            "gbdt",
            shoal_proto::v1::task::Kind::Sketch(Default::default()),
        );
        assert_eq!(
            r.dispatch("a", sketch).err().unwrap(),
            Undeliverable::Unable {
                client: "a".into(),
                model: "gbdt".into(),
                task: "sketch",
            }
        );
        let fit = of(
            "external",
            shoal_proto::v1::task::Kind::Fit(Default::default()),
        );
        let _slot = r.dispatch("a", fit).unwrap();
        let pushed = reg.rx.recv().await.unwrap().unwrap();
        assert!(
            matches!(pushed.msg, Some(coordinator_message::Msg::Task(t)) if t.task_id == "external-task"),
            "only the task it runs reached the stream"
        );
    }

    #[tokio::test]
    async fn disconnect_fails_open_tasks_at_once() {
        let r = Registry::default();
        let reg = r
            .register("a", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        let s = reg.session;
        let slot = r.dispatch("a", task("t1")).unwrap();
        r.unregister("a", s);
        assert!(slot.await.is_none());
        assert!(r.dispatch("a", task("t2")).is_err());
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn a_name_holds_one_session_until_it_ends() {
        let r = Registry::default();
        let r1 = r
            .register("a", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        assert!(matches!(
            r.register("a", ds("d"), Capabilities::builtin(), None),
            Err(RegisterError::NameTaken { .. })
        ));
        r.unregister("a", r1.session);
        let r2 = r
            .register("a", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        r.unregister("a", r1.session); // a stale cleanup must not remove the new session
        assert_eq!(r.available("d").len(), 1);
        r.unregister("a", r2.session);
        assert!(r.available("d").is_empty());
    }

    #[tokio::test]
    async fn a_silent_session_is_replaced_by_a_new_hello_under_its_name() {
        // Every session counts as silent at once: a new Hello takes the name over.
        let r = Registry::default().with_stale_after(Duration::ZERO);
        let mut old = r
            .register("a", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        let slot = r.dispatch("a", task("t1")).unwrap();
        assert!(
            old.rx.recv().await.is_some(),
            "task pushed down the old stream"
        );
        let new = r
            .register("a", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        assert!(new.session > old.session);
        // The old stream ends, and its open task is let go (its round stops waiting for it).
        assert!(old.rx.recv().await.is_none());
        assert!(slot.await.is_none());
        // The old session's reader ending later must not remove the new one.
        r.unregister("a", old.session);
        assert_eq!(r.len(), 1);
        // A result from the old session for a task of the new one is refused.
        let _slot2 = r.dispatch("a", task("t2")).unwrap();
        let res = TaskResult {
            task_id: "t2".into(),
            ..Default::default()
        };
        assert!(r.complete("a", old.session, res.clone(), 1).is_err());
        r.complete("a", new.session, res, 1).unwrap();

        // A session heard from recently keeps its name.
        let r = Registry::default().with_stale_after(Duration::from_secs(3600));
        let live = r
            .register("b", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        r.seen("b", live.session);
        assert!(matches!(
            r.register("b", ds("d"), Capabilities::builtin(), None),
            Err(RegisterError::NameTaken { .. })
        ));
    }

    #[test]
    fn the_announced_budget_bounds_all_hellos_together() {
        let one = announced_bytes(&ds("d"));
        let r = Registry::default().with_announced_budget(2 * one);
        let a = r
            .register("a", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        r.register("b", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        let full = r.register("c", ds("d"), Capabilities::builtin(), None);
        assert!(
            matches!(full, Err(RegisterError::Budget { .. })),
            "{full:?}"
        );
        assert!(full
            .unwrap_err()
            .to_string()
            .contains("--max-announced-bytes"));
        // A client that leaves gives its share back.
        r.unregister("a", a.session);
        r.register("c", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        r.drop_client("b");
        r.register("d", ds("d"), Capabilities::builtin(), None)
            .unwrap();
    }

    /// S10 #2: with 20 to 40 jobs sending a client tasks at once, the 17th found the queue full
    /// and the client was taken for gone ("7 left"), although it was only busy. Tasks beyond the
    /// queue now wait their turn and all arrive, in the order they were dispatched.
    #[tokio::test]
    async fn a_burst_beyond_the_queue_waits_its_turn_instead_of_dropping_the_client() {
        let r = Registry::default();
        let mut reg = r
            .register("busy", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        let n = 3 * OUTBOUND_DEPTH;
        let deliveries: Vec<_> = (0..n)
            .map(|i| {
                tokio::spawn(
                    r.dispatch("busy", task(&format!("t{i:03}")))
                        .expect("a busy client still takes tasks"),
                )
            })
            .collect();
        let mut got = Vec::new();
        for _ in 0..n {
            match reg.rx.recv().await.unwrap().unwrap().msg {
                Some(coordinator_message::Msg::Task(t)) => got.push(t.task_id),
                other => panic!("{other:?}"),
            }
        }
        let want: Vec<_> = (0..n).map(|i| format!("t{i:03}")).collect();
        assert_eq!(got, want);
        // Each delivery still waits for its result: answered, it resolves.
        for (i, d) in deliveries.into_iter().enumerate() {
            let res = TaskResult {
                task_id: format!("t{i:03}"),
                ..Default::default()
            };
            r.complete("busy", reg.session, res, 1).unwrap();
            assert!(d.await.unwrap().is_some());
        }
    }

    /// A task waiting for room is not yet sent (its phase must not call the client silent if it
    /// closes then); it is once the stream takes it.
    #[tokio::test]
    async fn a_task_counts_as_sent_only_once_it_is_on_the_stream() {
        let r = Registry::default();
        let mut reg = r
            .register("busy", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        let first: Vec<_> = (0..OUTBOUND_DEPTH)
            .map(|i| r.dispatch("busy", task(&format!("t{i}"))).unwrap())
            .collect();
        assert!(first
            .iter()
            .all(|d| d.sent().load(std::sync::atomic::Ordering::Acquire)));
        let extra = r.dispatch("busy", task("extra")).unwrap();
        let sent = extra.sent();
        let waiting = tokio::spawn(extra);
        tokio::task::yield_now().await;
        assert!(!sent.load(std::sync::atomic::Ordering::Acquire));
        reg.rx.recv().await.unwrap().unwrap();
        for _ in 0..100 {
            if sent.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(sent.load(std::sync::atomic::Ordering::Acquire));
        waiting.abort();
    }

    /// A session that ends while its tasks wait for room fails them at once (no deadline wait).
    #[tokio::test]
    async fn tasks_waiting_for_room_fail_when_the_session_ends() {
        let r = Registry::default();
        let reg = r
            .register("gone", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        let waiting: Vec<_> = (0..OUTBOUND_DEPTH + 2)
            .map(|i| tokio::spawn(r.dispatch("gone", task(&format!("t{i}"))).unwrap()))
            .collect();
        tokio::task::yield_now().await;
        r.unregister("gone", reg.session);
        drop(reg);
        for w in waiting {
            assert!(w.await.unwrap().is_none());
        }
    }

    #[test]
    fn a_full_registry_refuses_new_clients_until_one_leaves() {
        let r = Registry::new(2);
        let a = r
            .register("a", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        let _b = r
            .register("b", ds("d"), Capabilities::builtin(), None)
            .unwrap();
        assert!(matches!(
            r.register("c", ds("d"), Capabilities::builtin(), None),
            Err(RegisterError::Full { max: 2 })
        ));
        r.unregister("a", a.session);
        assert!(r
            .register("c", ds("d"), Capabilities::builtin(), None)
            .is_ok());
    }

    #[tokio::test]
    async fn close_refuses_new_clients() {
        let r = Registry::default();
        r.close();
        assert!(matches!(
            r.register("a", ds("d"), Capabilities::builtin(), None),
            Err(RegisterError::Closed)
        ));
    }

    #[test]
    fn available_filters_by_dataset_and_sorts() {
        let r = Registry::default();
        let _c = r
            .register("c", ds("x"), Capabilities::builtin(), None)
            .unwrap();
        let _a = r
            .register("a", ds("x"), Capabilities::builtin(), None)
            .unwrap();
        let _b = r
            .register("b", ds("y"), Capabilities::builtin(), None)
            .unwrap();
        let names: Vec<_> = r.available("x").into_iter().map(|c| c.name).collect();
        assert_eq!(names, vec!["a", "c"]);
    }

    /// S9 #3: views share what the Hello announced instead of copying it. Jobs take views in
    /// every wait and phase; with four 48 MiB Hellos the copies took the coordinator's peak from
    /// 412 MB to 839 MB (`/proc` VmHWM, one job waiting for a fifth client).
    #[test]
    fn views_share_the_announced_datasets() {
        let r = Registry::default();
        let _a = r
            .register("a", ds("x"), Capabilities::builtin(), None)
            .unwrap();
        let (one, two) = (r.available("x"), r.available("x"));
        assert!(Arc::ptr_eq(&one[0].datasets, &two[0].datasets));
    }
}
