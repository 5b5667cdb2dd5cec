//! `shoal-conformance`: checks a Shoal client against the wire protocol (`docs/PROTOCOL.md`) by
//! playing the coordinator's side of `Federation.Connect` on loopback and running the client as
//! a process.
//!
//! ```sh
//! shoal-conformance -- target/debug/shoal-client --coordinator {addr} --builtin iris --partition iid --shard 0/1
//! shoal-conformance -- python my_client.py {addr}
//! ```
//!
//! Each check starts the client afresh (`{addr}` becomes `http://127.0.0.1:PORT`), plays one
//! script, and says PASS, FAIL (with the reason and the client's last output lines) or SKIP.
//! The checks: the handshake and a clean stop on SIGTERM; heartbeats; giving up a silent stream;
//! reconnecting after the stream ends or fails; retrying with backoff on `ALREADY_EXISTS`,
//! `RESOURCE_EXHAUSTED`, `UNAVAILABLE` and `DEADLINE_EXCEEDED`; stopping on a `Reject` for a
//! protocol version mismatch and for bad credentials; every task kind of every model kind the
//! client lists (a round of that kind's real server half, whose checks judge the replies, plus
//! evaluations, two tasks open at once); skipping a task past its deadline; never replaying a
//! result on a later session.
//!
//! Tasks use the first dataset the Hello announces. An `external` model is driven as a softmax
//! regression: tensors `weight` `[features, classes]` and `bias` `[classes]`.

use std::pin::Pin;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use futures::Stream;
use shoal_coordinator::engine::round::check_evaluation;
use shoal_coordinator::server::services::check_hello;
use shoal_proto::tasks::{expected_reply, reply_from_wire, request_to_wire, TaskPayload};
use shoal_proto::v1::federation_server::{Federation, FederationServer};
use shoal_proto::v1::{
    self, client_message, coordinator_message, task, task_result, ClientMessage, CoordinatorMessage,
};
use shoal_proto::PROTOCOL_VERSION;
use shoal_shared::models::external::{ExternalInit, ExternalSpec, TensorSpec};
use shoal_shared::models::phase::{Capabilities, Payload, PhaseTally, RoundPlan, Step, TaskKind};
use shoal_shared::models::sgd::LocalConfig;
use shoal_shared::models::{ModelSpec, Server, ServerSetup};
use shoal_shared::strategy::StrategySpec;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Plays the coordinator's side of the protocol against a client process, check by check.
#[derive(Debug, Parser)]
#[command(name = "shoal-conformance", version, about)]
struct Args {
    /// Run only these checks (comma-separated): handshake, heartbeats, silence, reconnect, retry,
    /// reject-version, reject-credentials, tasks, late, no-replay.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The client's command line; `{addr}` is replaced by the harness's address.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

const CHECKS: [&str; 10] = [
    "handshake",
    "heartbeats",
    "silence",
    "reconnect",
    "retry",
    "reject-version",
    "reject-credentials",
    "tasks",
    "late",
    "no-replay",
];

/// The heartbeat interval the harness announces: short, so liveness checks are quick.
const BEAT_MS: u32 = 500;
/// How long a client may take to start and send its Hello.
const FIRST_HELLO: Duration = Duration::from_secs(20);

type OutStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;
type Out = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// One `Connect` call, held until the script answers it.
struct Conn {
    inbound: Streaming<ClientMessage>,
    answer: oneshot::Sender<Result<Response<OutStream>, Status>>,
    at: Instant,
}

struct Script {
    conns: mpsc::Sender<Conn>,
}

#[tonic::async_trait]
impl Federation for Script {
    type ConnectStream = OutStream;

    async fn connect(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let (answer, answered) = oneshot::channel();
        let conn = Conn {
            inbound: request.into_inner(),
            answer,
            at: Instant::now(),
        };
        self.conns
            .send(conn)
            .await
            .map_err(|_| Status::unavailable("the harness is done"))?;
        answered
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the harness is done")))
    }
}

/// A live session the script holds: what it sends and what the client sends.
struct Session {
    out: Out,
    inbound: Streaming<ClientMessage>,
}

impl Session {
    async fn send(&self, msg: coordinator_message::Msg) -> Result<()> {
        self.out
            .send(Ok(CoordinatorMessage { msg: Some(msg) }))
            .await
            .map_err(|_| anyhow!("the client closed the stream"))
    }

    /// The next message within `within`; `None` when the stream ended.
    async fn recv(&mut self, within: Duration) -> Result<Option<client_message::Msg>> {
        match tokio::time::timeout(within, self.inbound.message()).await {
            Err(_) => bail!("nothing from the client within {within:?}"),
            Ok(Ok(Some(m))) => Ok(m.msg),
            Ok(Ok(None)) | Ok(Err(_)) => Ok(None),
        }
    }
}

/// The client process and the server it talks to, for one check.
struct Harness {
    conns: mpsc::Receiver<Conn>,
    child: tokio::process::Child,
    log: tempfile::NamedTempFile,
    _stop: oneshot::Sender<()>,
}

impl Harness {
    async fn start(command: &[String]) -> Result<Harness> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = format!("http://{}", listener.local_addr()?);
        let (tx, conns) = mpsc::channel(16);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(FederationServer::new(Script { conns: tx }))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        let log = tempfile::NamedTempFile::new()?;
        let args: Vec<String> = command.iter().map(|a| a.replace("{addr}", &addr)).collect();
        let child = tokio::process::Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log.reopen()?)
            .stderr(log.reopen()?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start `{}`", args[0]))?;
        Ok(Harness {
            conns,
            child,
            log,
            _stop: stop,
        })
    }

    /// The next connection attempt within `within`.
    async fn conn(&mut self, within: Duration) -> Result<Conn> {
        tokio::time::timeout(within, self.conns.recv())
            .await
            .map_err(|_| anyhow!("no connection from the client within {within:?}"))?
            .ok_or_else(|| anyhow!("the server stopped"))
    }

    /// No connection attempt for `during`.
    async fn no_conn(&mut self, during: Duration, why: &str) -> Result<()> {
        match tokio::time::timeout(during, self.conns.recv()).await {
            Ok(Some(_)) => bail!("the client connected again {why}"),
            _ => Ok(()),
        }
    }

    /// Whether the process ends within `within`; its exit code if it did.
    async fn exits(&mut self, within: Duration) -> Option<Option<i32>> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .map(|s| s.ok().and_then(|s| s.code()))
    }

    fn sigterm(&self) -> Result<()> {
        let pid = self.child.id().context("the client has already exited")?;
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?
            .success();
        ok.then_some(()).context("kill -TERM failed")
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n    ")
    }
}

/// Reads the first message of a connection, which must be a protocol-conformant Hello.
async fn hello(conn: &mut Conn) -> Result<v1::Hello> {
    let first = tokio::time::timeout(Duration::from_secs(10), conn.inbound.message())
        .await
        .map_err(|_| anyhow!("no Hello within 10 s of connecting (PROTOCOL §2.1)"))?;
    let Ok(Some(ClientMessage {
        msg: Some(client_message::Msg::Hello(h)),
    })) = first
    else {
        bail!("the first message is not a Hello (PROTOCOL §2.1)");
    };
    if h.protocol_version != PROTOCOL_VERSION {
        bail!(
            "Hello.protocol_version is {}, this protocol is version {PROTOCOL_VERSION}",
            h.protocol_version
        );
    }
    check_hello(&h).map_err(|e| anyhow!("the coordinator would reject this Hello: {e}"))?;
    let caps = Capabilities::parse(&h.model_kinds, &h.task_kinds)
        .map_err(|e| anyhow!("the coordinator would reject this Hello: {e}"))?;
    for kind in &caps.model_kinds {
        let spec = ModelSpec::from_name(kind)?;
        let needs = spec.kind().training_tasks();
        if !caps.runs(kind, needs) || !caps.task_kinds.contains(&TaskKind::Evaluate) {
            bail!("Hello lists model kind `{kind}` without the task kinds it needs ({needs:?} and evaluate)");
        }
    }
    Ok(h)
}

/// Answers a connection with Welcome (announcing `BEAT_MS`).
async fn welcome(conn: Conn, name: &str) -> Result<Session> {
    let (out, rx) = mpsc::channel(64);
    let stream: OutStream = Box::pin(ReceiverStream::new(rx));
    conn.answer
        .send(Ok(Response::new(stream)))
        .map_err(|_| anyhow!("the client's call ended before Welcome"))?;
    let s = Session {
        out,
        inbound: conn.inbound,
    };
    s.send(coordinator_message::Msg::Welcome(v1::Welcome {
        client_id: name.to_string(),
        protocol_version: PROTOCOL_VERSION,
        heartbeat_interval_ms: BEAT_MS,
        // This harness reads whole messages only.
        max_transfer_bytes: 0,
        max_message_bytes: 0,
    }))
    .await?;
    Ok(s)
}

/// Starts the client and welcomes its first connection.
async fn connected(h: &mut Harness) -> Result<(Session, v1::Hello)> {
    let mut conn = h.conn(FIRST_HELLO).await?;
    let hello = hello(&mut conn).await?;
    let s = welcome(conn, &hello.client_name).await?;
    Ok((s, hello))
}

/// Sends a heartbeat every `BEAT_MS` until the session's stream closes.
fn beat(out: &Out) {
    let out = out.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(u64::from(BEAT_MS)));
        tick.tick().await;
        loop {
            tick.tick().await;
            let hb = CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Heartbeat(v1::Heartbeat {
                    unix_ms: unix_ms(),
                })),
            };
            if out.send(Ok(hb)).await.is_err() {
                return;
            }
        }
    });
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn check_handshake(h: &mut Harness) -> Result<String> {
    let (s, hello) = connected(h).await?;
    beat(&s.out);
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.sigterm()?;
    if h.exits(Duration::from_secs(10)).await.is_none() {
        bail!("still running 10 s after SIGTERM");
    }
    Ok(format!(
        "Hello v{} from `{}`: {} dataset(s), models {:?}, tasks {:?}; stopped on SIGTERM",
        hello.protocol_version,
        hello.client_name,
        hello.datasets.len(),
        hello.model_kinds,
        hello.task_kinds
    ))
}

async fn check_heartbeats(h: &mut Harness) -> Result<String> {
    let (mut s, _) = connected(h).await?;
    beat(&s.out);
    let (start, mut last, mut beats, mut worst) =
        (Instant::now(), Instant::now(), 0, Duration::ZERO);
    while start.elapsed() < Duration::from_secs(4) {
        match s.recv(Duration::from_secs(3)).await? {
            Some(client_message::Msg::Heartbeat(_)) => beats += 1,
            Some(_) => {}
            None => bail!("the client ended a live stream"),
        }
        worst = worst.max(last.elapsed());
        last = Instant::now();
    }
    // At least every interval, with room for scheduling.
    if beats < 5 || worst > Duration::from_millis(u64::from(BEAT_MS) * 3) {
        bail!("{beats} heartbeats in 4 s at a {BEAT_MS} ms interval, longest gap {worst:?} (PROTOCOL §2.6)");
    }
    Ok(format!(
        "{beats} heartbeats in 4 s, longest gap {} ms",
        worst.as_millis()
    ))
}

async fn check_silence(h: &mut Harness) -> Result<String> {
    let (_s, hello) = connected(h).await?;
    // No heartbeats: after 3 intervals of silence the client should give the stream up.
    let since = Instant::now();
    let mut conn = h.conn(Duration::from_secs(10)).await?;
    let after = since.elapsed();
    let again = self::hello(&mut conn).await?;
    if again.client_name != hello.client_name {
        bail!("reconnected under another name");
    }
    if after < Duration::from_millis(u64::from(BEAT_MS) * 2) {
        bail!("gave up a welcomed stream after {after:?}, before 2 silent intervals");
    }
    Ok(format!(
        "reconnected {} ms into the coordinator's silence",
        after.as_millis()
    ))
}

async fn check_reconnect(h: &mut Harness) -> Result<String> {
    let (s, hello) = connected(h).await?;
    drop(s); // the stream ends cleanly
    let mut conn = h.conn(Duration::from_secs(10)).await?;
    self::hello(&mut conn).await?;
    let s = welcome(conn, &hello.client_name).await?;
    s.out
        .send(Err(Status::internal("the harness fails this stream")))
        .await
        .ok();
    drop(s);
    let mut conn = h.conn(Duration::from_secs(10)).await?;
    let again = self::hello(&mut conn).await?;
    if again.client_name != hello.client_name {
        bail!("reconnected under another name");
    }
    Ok("reconnected after a stream that ended and one that failed".into())
}

async fn check_retry(h: &mut Harness) -> Result<String> {
    let refusals = [
        Status::already_exists("a session under this name is still live (harness)"),
        Status::resource_exhausted("too many clients (harness)"),
        Status::unavailable("shutting down (harness)"),
        Status::deadline_exceeded("no Hello in time (harness)"),
    ];
    let mut times = Vec::new();
    let mut name = None;
    for status in refusals {
        let mut conn = h.conn(FIRST_HELLO).await?;
        let hello = hello(&mut conn).await?;
        if name.get_or_insert(hello.client_name.clone()) != &hello.client_name {
            bail!("retried under another name");
        }
        times.push(conn.at);
        let _ = conn.answer.send(Err(status));
    }
    let mut conn = h.conn(Duration::from_secs(30)).await?;
    hello(&mut conn).await?;
    times.push(conn.at);
    let span = times[4] - times[0];
    // The Rust client's waits are at least 0.1 + 0.2 + 0.4 + 0.8 s; a client that hammers the
    // coordinator is caught by any bound well below that.
    if span < Duration::from_millis(700) {
        bail!("5 attempts in {span:?}: retries need an exponential backoff (PROTOCOL §2.8)");
    }
    let gaps: Vec<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    Ok(format!(
        "retried after each of 4 statuses, waits {gaps:?} ms"
    ))
}

async fn check_reject(h: &mut Harness, version: u32, reason: &str) -> Result<String> {
    let mut conn = h.conn(FIRST_HELLO).await?;
    hello(&mut conn).await?;
    let msg = CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Reject(v1::Reject {
            reason: reason.into(),
            coordinator_protocol_version: version,
        })),
    };
    let stream: OutStream = Box::pin(futures::stream::iter([Ok(msg)]));
    let _ = conn.answer.send(Ok(Response::new(stream)));
    match h.exits(Duration::from_secs(10)).await {
        None => bail!("still running 10 s after a Reject (a Reject is final: PROTOCOL §2.4)"),
        Some(Some(0)) => {
            bail!("exited with status 0 after a Reject: the operator must see it failed")
        }
        Some(code) => {
            h.no_conn(Duration::from_millis(200), "after a Reject")
                .await?;
            Ok(format!("stopped with exit status {code:?}"))
        }
    }
}

/// The model kinds of `hello` the harness drives, with their specs; and those it cannot.
fn drivable(hello: &v1::Hello) -> Result<(Vec<ModelSpec>, Vec<String>)> {
    let d = &hello.datasets[0];
    let (features, classes) = (d.feature_names.len(), d.class_names.len());
    let (mut specs, mut skipped) = (Vec::new(), Vec::new());
    for kind in &hello.model_kinds {
        let spec = match kind.as_str() {
            "logreg" | "forest" | "gbdt" => ModelSpec::from_name(kind)?,
            "mlp" => ModelSpec::from_name(kind)?.kind().with_hidden(&[8])?,
            "external" => ModelSpec::External(ExternalSpec {
                tensors: vec![
                    TensorSpec {
                        name: "weight".into(),
                        shape: vec![features, classes],
                        dtype: "f32".into(),
                    },
                    TensorSpec {
                        name: "bias".into(),
                        shape: vec![classes],
                        dtype: "f32".into(),
                    },
                ],
                init: ExternalInit::Normal,
                init_std: 0.01,
                init_file: None,
            }),
            other => {
                skipped.push(other.to_string());
                continue;
            }
        };
        specs.push(spec);
    }
    Ok((specs, skipped))
}

/// Builds tasks the way the coordinator does.
struct Tasks<'a> {
    hello: &'a v1::Hello,
    spec: &'a ModelSpec,
    job: String,
    seq: u32,
}

impl Tasks<'_> {
    fn make(
        &mut self,
        round: u32,
        kind: task::Kind,
        payload: TaskPayload,
        deadline: u64,
    ) -> v1::Task {
        self.seq += 1;
        let d = &self.hello.datasets[0];
        v1::Task {
            task_id: format!(
                "{}/{round}/{}/{:010}/{}",
                self.job,
                kind_name(&kind),
                self.seq,
                self.hello.client_name
            ),
            job_id: self.job.clone(),
            round,
            dataset: d.name.clone(),
            class_names: d.class_names.clone(),
            model: Some(shoal_proto::model_to_wire(self.spec)),
            parameters: payload.parameters,
            forest: payload.forest,
            ensemble: payload.ensemble,
            deadline_unix_ms: deadline,
            seed: 42 + u64::from(self.seq),
            kind: Some(kind),
            ..Default::default()
        }
    }
}

fn kind_name(kind: &task::Kind) -> &'static str {
    shoal_proto::tasks::task_kind(kind).as_str()
}

fn local() -> v1::LocalTraining {
    let c = LocalConfig {
        epochs: 1,
        batch_size: 16,
        lr: 0.05,
        momentum: 0.0,
        weight_decay: 0.0,
        proximal_mu: 0.0,
        lr_decay: 1.0,
    };
    shoal_proto::local_to_wire(&c, c.lr, 0.0)
}

fn evaluate_kind() -> task::Kind {
    task::Kind::Evaluate(v1::EvaluateTask {
        personalize_epochs: 0,
        local: None,
    })
}

/// Waits for one result per task in `open`, each echoing its task's ids; returns them by id.
async fn results(
    s: &mut Session,
    open: &[&v1::Task],
) -> Result<Vec<(String, Option<task_result::Outcome>)>> {
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while got.len() < open.len() {
        let left = until.saturating_duration_since(Instant::now());
        match s.recv(left).await? {
            Some(client_message::Msg::Result(r)) => {
                let Some(t) = open.iter().find(|t| t.task_id == r.task_id) else {
                    bail!("a result for task `{}`, which is not open", r.task_id);
                };
                if got.iter().any(|(id, _)| id == &r.task_id) {
                    bail!("two results for task `{}`", r.task_id);
                }
                if r.job_id != t.job_id || r.round != t.round {
                    bail!(
                        "the result for `{}` names job `{}` round {}, the task job `{}` round {} (PROTOCOL §3.2)",
                        t.task_id, r.job_id, r.round, t.job_id, t.round
                    );
                }
                got.push((r.task_id, r.outcome));
            }
            Some(_) => {}
            None => bail!("the client ended the stream with tasks open"),
        }
    }
    Ok(got)
}

/// Checks an evaluation result as the coordinator does.
fn evaluation(
    outcome: Option<task_result::Outcome>,
    d: &v1::DatasetInfo,
    classifies: bool,
) -> Result<()> {
    match outcome {
        Some(task_result::Outcome::Evaluate(e)) => {
            check_evaluation(&e, Some(d.test_examples), classifies)
                .map_err(|r| anyhow!("evaluation refused: {r}"))
        }
        Some(task_result::Outcome::Error(e)) => bail!("evaluation answered with an error: {e}"),
        _ => bail!("an evaluate task was not answered with an evaluation"),
    }
}

/// `spec`'s server half over the Hello's first dataset, and its first step of round 1 with this
/// client as the whole federation.
fn solo_round(hello: &v1::Hello, spec: &ModelSpec) -> Result<(Server, Step)> {
    let d = &hello.datasets[0];
    let mut server = spec.kind().server(&ServerSetup {
        n_features: d.feature_names.len(),
        n_classes: d.class_names.len(),
        init_seed: 7,
        max_params: 1 << 24,
        strategy: StrategySpec::default(),
        bound: None,
        influence: Default::default(),
        initial: None,
        spool: Default::default(),
    })?;
    let name = hello.client_name.clone();
    let step = server.begin_round(RoundPlan {
        round: 1,
        selected: vec![name.clone()],
        available: vec![name],
        quorum: 1,
        min_clients: 1,
        target: None,
        n_available: 1,
        announced: vec![hello.datasets.iter().map(|d| d.train_examples).sum()],
    })?;
    Ok((server, step))
}

/// One round of `spec`'s real server half with this client alone, then an evaluation of the
/// result; the first phase goes out beside an evaluation of the initial model.
async fn drive(s: &mut Session, hello: &v1::Hello, spec: &ModelSpec) -> Result<String> {
    let d = &hello.datasets[0];
    let name = hello.client_name.clone();
    let (mut server, mut step) = solo_round(hello, spec)?;
    let classifies = server.classifies();
    let mut tasks = Tasks {
        hello,
        spec,
        job: format!("conformance-{}", spec.name()),
        seq: 0,
    };
    let deadline = unix_ms() + 60_000;
    let (mut phases, mut first) = (Vec::new(), true);
    let accepted = loop {
        let ask = match step {
            Step::Done(r) => break r.accepted,
            Step::Ask(a) => a,
        };
        let expected = expected_reply(&ask.request);
        let kind = request_to_wire(ask.request, local());
        phases.push(kind_name(&kind));
        let base = match &ask.payload {
            Payload::Weights(w) => Some(w.clone()),
            _ => None,
        };
        let t = tasks.make(ask.round, kind, TaskPayload::from(ask.payload), deadline);
        s.send(coordinator_message::Msg::Task(t.clone())).await?;
        let mut open = vec![t.clone()];
        // Two tasks open at once: an evaluation of the model as it is, where there is one yet.
        if first && !matches!(server.payload(), Payload::None) {
            let e = tasks.make(
                1,
                evaluate_kind(),
                TaskPayload::from(server.payload()),
                deadline,
            );
            s.send(coordinator_message::Msg::Task(e.clone())).await?;
            open.push(e);
        }
        for (id, outcome) in results(s, &open.iter().collect::<Vec<_>>()).await? {
            if id == t.task_id {
                let reply =
                    reply_from_wire(outcome, server.decode_bounds(), expected, base.as_deref())
                        .map_err(|r| {
                            anyhow!("{} refused: {r}", kind_name(t.kind.as_ref().unwrap()))
                        })?;
                server
                    .accept(&name, reply, Some(d.train_examples))
                    .map_err(|r| anyhow!("{} refused: {r}", kind_name(t.kind.as_ref().unwrap())))?;
            } else {
                evaluation(outcome, d, classifies)?;
            }
        }
        first = false;
        step = server.close(PhaseTally {
            accepted: 1,
            rejected: 0,
            failed: 0,
            timed_out: 0,
        })?;
    };
    if accepted != 1 {
        bail!("the round ended with {accepted} updates");
    }
    let e = tasks.make(
        1,
        evaluate_kind(),
        TaskPayload::from(server.payload()),
        deadline,
    );
    s.send(coordinator_message::Msg::Task(e.clone())).await?;
    for (_, outcome) in results(s, &[&e]).await? {
        evaluation(outcome, d, classifies)?;
    }
    phases.dedup();
    Ok(format!("{}: {}, evaluate", spec.name(), phases.join(", ")))
}

/// A `get_parameters` task (an external model with `init = "client"`): the answer must be
/// parameters that fit the model's tensors, as the coordinator checks them.
async fn initial_parameters(
    s: &mut Session,
    hello: &v1::Hello,
    specs: &[ModelSpec],
) -> Result<String> {
    let spec = specs
        .iter()
        .find(|m| m.external().is_some())
        .context("Hello lists task kind `parameters` without model kind `external`")?;
    let ext = spec.external().unwrap();
    let mut tasks = Tasks {
        hello,
        spec,
        job: "conformance-parameters".into(),
        seq: 0,
    };
    let t = tasks.make(
        0,
        task::Kind::GetParameters(v1::ParametersTask {}),
        TaskPayload::default(),
        unix_ms() + 60_000,
    );
    s.send(coordinator_message::Msg::Task(t.clone())).await?;
    for (_, outcome) in results(s, &[&t]).await? {
        let Some(task_result::Outcome::Parameters(p)) = outcome else {
            bail!("a get_parameters task was not answered with parameters");
        };
        let w = shoal_proto::weights_from_wire(
            p.parameters
                .as_ref()
                .context("parameters result without parameters")?,
            1 << 24,
        )?;
        w.check_finite()?;
        ext.adopt(w)
            .context("the initial parameters do not fit the model")?;
    }
    Ok("get_parameters".into())
}

async fn check_tasks(h: &mut Harness) -> Result<String> {
    let (mut s, hello) = connected(h).await?;
    beat(&s.out);
    let (specs, skipped) = drivable(&hello)?;
    let mut done = Vec::new();
    if hello.task_kinds.iter().any(|k| k == "parameters") {
        done.push(initial_parameters(&mut s, &hello, &specs).await?);
    }
    for spec in &specs {
        let started = Instant::now();
        let note = drive(&mut s, &hello, spec).await?;
        done.push(format!("{note} ({:.1} s)", started.elapsed().as_secs_f64()));
    }
    // Nothing more for a second: no second answer to any task. (Bounded by time, not by a
    // silent gap: heartbeats keep arriving.)
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.inbound.message()).await {
            Ok(Ok(Some(ClientMessage {
                msg: Some(client_message::Msg::Result(r)),
            }))) => bail!("an extra result for task `{}`", r.task_id),
            Ok(Ok(Some(_))) => {}
            _ => break,
        }
    }
    let mut note = done.join("; ");
    if !skipped.is_empty() {
        note.push_str(&format!(" (not driven here: {})", skipped.join(", ")));
    }
    Ok(note)
}

/// A first-phase task for the first model kind the harness drives.
fn first_task(hello: &v1::Hello, deadline: u64) -> Result<v1::Task> {
    let (specs, _) = drivable(hello)?;
    let spec = specs
        .first()
        .context("the client lists no model kind the harness drives")?;
    let Step::Ask(ask) = solo_round(hello, spec)?.1 else {
        bail!("the server half asked nothing");
    };
    let mut tasks = Tasks {
        hello,
        spec,
        job: "conformance-late".into(),
        seq: 0,
    };
    let kind = request_to_wire(ask.request, local());
    Ok(tasks.make(ask.round, kind, TaskPayload::from(ask.payload), deadline))
}

async fn check_late(h: &mut Harness) -> Result<String> {
    let (mut s, hello) = connected(h).await?;
    beat(&s.out);
    let t = first_task(&hello, unix_ms().saturating_sub(1_000))?;
    s.send(coordinator_message::Msg::Task(t.clone())).await?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        match s.recv(Duration::from_secs(2)).await? {
            Some(client_message::Msg::Result(r)) => bail!(
                "answered task `{}` whose deadline had passed (skip it: PROTOCOL §2.9)",
                r.task_id
            ),
            Some(_) => {}
            None => bail!("the client ended the stream"),
        }
    }
    Ok(format!(
        "skipped a {} task past its deadline",
        kind_name(t.kind.as_ref().unwrap())
    ))
}

async fn check_no_replay(h: &mut Harness) -> Result<String> {
    let (s, hello) = connected(h).await?;
    let t = first_task(&hello, unix_ms() + 60_000)?;
    s.send(coordinator_message::Msg::Task(t.clone())).await?;
    drop(s); // the session ends with the task open
    let mut conn = h.conn(Duration::from_secs(10)).await?;
    self::hello(&mut conn).await?;
    let mut s = welcome(conn, &hello.client_name).await?;
    beat(&s.out);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        match s.recv(Duration::from_secs(2)).await? {
            Some(client_message::Msg::Result(r)) => bail!(
                "sent a result for `{}` on a later session (never replay: PROTOCOL §2.8)",
                r.task_id
            ),
            Some(_) => {}
            None => bail!("the client ended the stream"),
        }
    }
    Ok("no result of the ended session's task on the next one".into())
}

async fn run_check(name: &str, command: &[String]) -> (Result<String>, String) {
    let mut h = match Harness::start(command).await {
        Ok(h) => h,
        Err(e) => return (Err(e), String::new()),
    };
    let outcome = match name {
        "handshake" => check_handshake(&mut h).await,
        "heartbeats" => check_heartbeats(&mut h).await,
        "silence" => check_silence(&mut h).await,
        "reconnect" => check_reconnect(&mut h).await,
        "retry" => check_retry(&mut h).await,
        "reject-version" => {
            check_reject(
                &mut h,
                PROTOCOL_VERSION + 1,
                &format!(
                "protocol version {PROTOCOL_VERSION} is not supported; this coordinator speaks {}",
                PROTOCOL_VERSION + 1
            ),
            )
            .await
        }
        "reject-credentials" => {
            check_reject(
                &mut h,
                PROTOCOL_VERSION,
                "unauthenticated: the token is not this client's",
            )
            .await
        }
        "tasks" => check_tasks(&mut h).await,
        "late" => check_late(&mut h).await,
        "no-replay" => check_no_replay(&mut h).await,
        other => Err(anyhow!(
            "no check named `{other}` (expected {})",
            CHECKS.join(", ")
        )),
    };
    let tail = h.tail();
    let _ = h.child.kill().await;
    (outcome, tail)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let checks: Vec<String> = if args.only.is_empty() {
        CHECKS.iter().map(|c| c.to_string()).collect()
    } else {
        args.only.clone()
    };
    let mut failed = 0;
    for name in &checks {
        let started = Instant::now();
        let (outcome, tail) = run_check(name, &args.command).await;
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(note) => println!("PASS {name} ({secs:.1} s): {note}"),
            Err(e) => {
                failed += 1;
                println!("FAIL {name} ({secs:.1} s): {e:#}");
                if !tail.is_empty() {
                    println!("  client output:\n    {tail}");
                }
            }
        }
    }
    println!(
        "{} of {} checks passed",
        checks.len() - failed,
        checks.len()
    );
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
