//! The registry of connected clients and of tasks awaiting their results.
//!
//! Each connected client owns one outbound channel (its half of the `Connect` stream). A task is
//! dispatched by registering a one-shot slot under its task id and pushing it down that channel; the
//! client's result fills the slot. When a client's stream ends, its slots are dropped, so whoever
//! waits on them learns at once that the client is gone: a vanished client never hangs a round.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;

use shoal_proto::v1::{coordinator_message, CoordinatorMessage, DatasetInfo, Task, TaskResult};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

/// Outbound half of a client's stream.
pub type Outbound = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// Depth of each client's outbound queue; tasks are few and large, so a small queue suffices.
const OUTBOUND_DEPTH: usize = 16;

/// A connected client as the round engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientView {
    pub name: String,
    pub datasets: Vec<DatasetInfo>,
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
}

/// Why a result was not accepted by the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultRejected {
    #[error("no open task `{0}` (unknown, already answered, or past its deadline)")]
    UnknownTask(String),
    #[error("task `{task}` was sent to another client, not to `{client}`")]
    WrongClient { task: String, client: String },
}

/// Why a task could not be dispatched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client `{0}` is no longer connected")]
pub struct Disconnected(pub String);

#[derive(Debug)]
struct Entry {
    session: u64,
    datasets: Vec<DatasetInfo>,
    addr: Option<SocketAddr>,
    tx: Outbound,
}

#[derive(Debug)]
struct Pending {
    client: String,
    session: u64,
    slot: oneshot::Sender<Arrived>,
}

#[derive(Debug, Default)]
struct Inner {
    clients: BTreeMap<String, Entry>,
    pending: HashMap<String, Pending>,
    next_session: u64,
    closed: bool,
}

/// Connected clients and open tasks.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// Bumped on every connect and disconnect, so waiters wake without polling.
    changed: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Registers a client. A client that reconnects under the same name replaces its old session
    /// (whose stream then ends and whose open tasks fail). Returns the session number and the
    /// receiving half of the client's outbound channel, or `None` when the registry is closed.
    pub fn register(
        &self,
        name: &str,
        datasets: Vec<DatasetInfo>,
        addr: Option<SocketAddr>,
    ) -> Option<(u64, mpsc::Receiver<Result<CoordinatorMessage, Status>>)> {
        let (tx, rx) = mpsc::channel(OUTBOUND_DEPTH);
        let session = {
            let mut inner = self.lock();
            if inner.closed {
                return None;
            }
            inner.next_session += 1;
            let session = inner.next_session;
            if let Some(old) = inner.clients.insert(
                name.to_string(),
                Entry {
                    session,
                    datasets,
                    addr,
                    tx,
                },
            ) {
                tracing::info!(client = name, old_session = old.session, "client reconnected; old session replaced");
                drop_pending_of(&mut inner, name, old.session);
            }
            session
        };
        self.bump();
        Some((session, rx))
    }

    /// Removes a client's session (no-op when a newer session has replaced it).
    pub fn unregister(&self, name: &str, session: u64) {
        let removed = {
            let mut inner = self.lock();
            let current = inner.clients.get(name).map(|e| e.session) == Some(session);
            if current {
                inner.clients.remove(name);
            }
            drop_pending_of(&mut inner, name, session);
            current
        };
        if removed {
            self.bump();
        }
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

    /// Sends `task` to `client` and returns the slot its result will arrive in.
    pub async fn dispatch(
        &self,
        client: &str,
        task: Task,
    ) -> Result<oneshot::Receiver<Arrived>, Disconnected> {
        let (slot, rx) = oneshot::channel();
        let task_id = task.task_id.clone();
        let tx = {
            let mut inner = self.lock();
            let entry = inner
                .clients
                .get(client)
                .ok_or_else(|| Disconnected(client.to_string()))?;
            let (tx, session) = (entry.tx.clone(), entry.session);
            inner.pending.insert(
                task_id.clone(),
                Pending {
                    client: client.to_string(),
                    session,
                    slot,
                },
            );
            tx
        };
        let msg = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Task(task)),
        };
        if tx.send(Ok(msg)).await.is_err() {
            self.lock().pending.remove(&task_id);
            return Err(Disconnected(client.to_string()));
        }
        Ok(rx)
    }

    /// Delivers a result from `client`'s session to whoever waits for it.
    pub fn complete(
        &self,
        client: &str,
        session: u64,
        result: TaskResult,
        bytes: u64,
    ) -> Result<(), ResultRejected> {
        let mut inner = self.lock();
        let task = result.task_id.clone();
        match inner.pending.get(&task) {
            None => return Err(ResultRejected::UnknownTask(task)),
            Some(p) if p.client != client || p.session != session => {
                return Err(ResultRejected::WrongClient {
                    task,
                    client: client.to_string(),
                })
            }
            Some(_) => {}
        }
        if let Some(p) = inner.pending.remove(&task) {
            // The waiter may have given up (deadline); then the result is simply dropped.
            let _ = p.slot.send(Arrived { result, bytes });
        }
        Ok(())
    }

    /// Forgets open tasks (after a round's deadline), so late results are refused.
    pub fn forget(&self, task_ids: &[String]) {
        let mut inner = self.lock();
        for id in task_ids {
            inner.pending.remove(id);
        }
    }

    /// Drops every client (ending their streams) and refuses new ones: the shutdown path.
    pub fn close(&self) {
        {
            let mut inner = self.lock();
            inner.closed = true;
            inner.clients.clear();
            inner.pending.clear();
        }
        self.bump();
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
        let (sa, mut rxa) = r.register("a", ds("d"), None).unwrap();
        let (sb, _rxb) = r.register("b", ds("d"), None).unwrap();
        let slot = r.dispatch("a", task("t1")).await.unwrap();
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
    }

    #[tokio::test]
    async fn disconnect_fails_open_tasks_at_once() {
        let r = Registry::default();
        let (s, _rx) = r.register("a", ds("d"), None).unwrap();
        let slot = r.dispatch("a", task("t1")).await.unwrap();
        r.unregister("a", s);
        assert!(slot.await.is_err());
        assert!(r.dispatch("a", task("t2")).await.is_err());
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn reconnect_replaces_the_old_session() {
        let r = Registry::default();
        let (s1, _rx1) = r.register("a", ds("d"), None).unwrap();
        let (s2, _rx2) = r.register("a", ds("d"), None).unwrap();
        r.unregister("a", s1); // the old stream's cleanup must not remove the new session
        assert_eq!(r.available("d").len(), 1);
        r.unregister("a", s2);
        assert!(r.available("d").is_empty());
    }

    #[test]
    fn available_filters_by_dataset_and_sorts() {
        let r = Registry::default();
        let _c = r.register("c", ds("x"), None).unwrap();
        let _a = r.register("a", ds("x"), None).unwrap();
        let _b = r.register("b", ds("y"), None).unwrap();
        let names: Vec<_> = r.available("x").into_iter().map(|c| c.name).collect();
        assert_eq!(names, vec!["a", "c"]);
    }
}
