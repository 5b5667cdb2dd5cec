//! Helpers shared by the integration tests.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use shoal_client::{Catalog, ClientConfig};
use shoal_coordinator::cli::AdminJobs;
use shoal_coordinator::state::Store;
use shoal_coordinator::{Coordinator, CoordinatorConfig};
use shoal_proto::v1::{
    self, client_message, coordinator_message, federation_client::FederationClient, ClientMessage,
    CoordinatorMessage, Hello,
};
use shoal_shared::data::builtin::Builtin;
use shoal_shared::data::partition::Partitioner;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A coordinator served in this process on 127.0.0.1:0.
pub struct TestCoordinator {
    pub url: String,
    pub coord: Arc<Coordinator>,
    /// Holds the run folders until the test ends.
    _runs: tempfile::TempDir,
    stop: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestCoordinator {
    pub async fn start() -> Self {
        Self::start_with(CoordinatorConfig::default()).await
    }

    /// Starts with `config`; its run folders go to a temporary directory.
    pub async fn start_with(config: CoordinatorConfig) -> Self {
        Self::start_on("127.0.0.1:0", config).await
    }

    /// Starts on a given address (to restart a coordinator where its clients expect it).
    pub async fn start_on(addr: &str, config: CoordinatorConfig) -> Self {
        let runs = tempfile::tempdir().unwrap();
        let coord = Coordinator::new(
            CoordinatorConfig {
                runs_dir: runs.path().to_path_buf(),
                ..config
            },
            Store::in_memory().unwrap(),
        )
        .unwrap();
        Self::serve(addr, coord, runs).await
    }

    /// Serves `coord` on `addr`; `runs` lives as long as the coordinator.
    async fn serve(addr: &str, coord: Arc<Coordinator>, runs: tempfile::TempDir) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let server = tokio::spawn(shoal_coordinator::server::serve(
            listener,
            coord.clone(),
            stop.clone().cancelled_owned(),
        ));
        TestCoordinator {
            url,
            coord,
            _runs: runs,
            stop,
            server: Some(server),
        }
    }

    /// Starts on `addr` with its state in `state` and run folders in `runs` (kept by the caller),
    /// and resumes the jobs a previous coordinator on that state left running.
    pub async fn start_persistent(
        addr: &str,
        state: &std::path::Path,
        runs: &std::path::Path,
    ) -> Self {
        let coord = Coordinator::new(
            CoordinatorConfig {
                runs_dir: runs.to_path_buf(),
                print_rounds: false,
                ..CoordinatorConfig::default()
            },
            Store::open(state).unwrap(),
        )
        .unwrap();
        let tc = Self::serve(addr, coord, tempfile::tempdir().unwrap()).await;
        tc.coord.resume_interrupted().unwrap();
        tc
    }

    /// A Jobs client without credentials (a coordinator without admin tokens lets it in).
    pub async fn jobs(&self) -> AdminJobs {
        self.jobs_with(None).await
    }

    /// A Jobs client that sends `token` as its admin token.
    pub async fn jobs_with(&self, token: Option<&str>) -> AdminJobs {
        shoal_coordinator::cli::connect_jobs_with(&self.url, None, token)
            .await
            .unwrap()
    }

    /// Waits (at most 20 s) until exactly `n` clients are connected.
    pub async fn wait_clients(&self, n: usize) {
        let mut changes = self.coord.registry().subscribe();
        tokio::time::timeout(Duration::from_secs(20), async {
            while self.coord.registry().len() != n {
                changes.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never saw {n} connected clients within 20 s"));
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(s) = self.server.take() {
            s.await.unwrap().unwrap();
        }
    }
}

pub async fn channel(url: &str) -> Channel {
    shoal_client::endpoint(url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Starts an in-process client holding shard `i` of `n` of a built-in dataset.
pub fn start_client(
    url: &str,
    dataset: Builtin,
    scheme: Partitioner,
    i: usize,
    n: usize,
) -> (CancellationToken, JoinHandle<shoal_client::Result<()>>) {
    let mut catalog = Catalog::new();
    catalog.add_builtin(dataset, &scheme, i, n, 42).unwrap();
    spawn_client(ClientConfig::new(url, format!("client-{i}"), catalog))
}

/// Runs an in-process client with `config` until the returned token is cancelled.
pub fn spawn_client(
    config: ClientConfig,
) -> (CancellationToken, JoinHandle<shoal_client::Result<()>>) {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let handle =
        tokio::spawn(async move { shoal_client::run(config, token.cancelled_owned()).await });
    (stop, handle)
}

/// Submits a TOML job and returns its id.
pub async fn submit(jobs: &mut AdminJobs, toml: &str) -> String {
    jobs.submit(v1::SubmitRequest {
        spec: toml.into(),
        format: "toml".into(),
        initial_parameters: None,
    })
    .await
    .unwrap()
    .into_inner()
    .job_id
}

/// Follows a job to its end (at most `secs`) and returns its final info and round reports.
pub async fn finish(
    jobs: &mut AdminJobs,
    id: &str,
    secs: u64,
) -> (v1::JobInfo, Vec<v1::RoundReport>) {
    let mut stream = jobs
        .watch(v1::WatchRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner();
    let mut rounds = Vec::new();
    let fut = async {
        while let Some(ev) = stream.message().await.unwrap() {
            match ev.event {
                Some(v1::watch_event::Event::Round(r)) => rounds.push(r),
                Some(v1::watch_event::Event::Finished(j)) => return j,
                None => {}
            }
        }
        panic!("watch ended without a final event");
    };
    let info = tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("job {id} did not end within {secs} s"));
    (info, rounds)
}

/// A hand-driven protocol peer: sends exactly what a test tells it to.
pub struct RawPeer {
    pub tx: mpsc::Sender<ClientMessage>,
    pub rx: tonic::Streaming<CoordinatorMessage>,
}

/// The model and task kinds the built-in client lists in its Hello.
pub fn builtin_kinds() -> (Vec<String>, Vec<String>) {
    let caps = shoal_shared::models::phase::Capabilities::builtin();
    (
        caps.model_kinds.into_iter().collect(),
        caps.task_kinds
            .iter()
            .map(|k| k.as_str().to_string())
            .collect(),
    )
}

impl RawPeer {
    /// Opens a stream and sends a Hello for `name` holding a built-in dataset's shape.
    pub async fn connect(url: &str, name: &str, version: u32, dataset: Builtin) -> Self {
        let data = dataset.holdout().unwrap();
        let hello = Hello {
            max_message_bytes: 0,
            max_transfer_bytes: 0,
            protocol_version: version,
            client_name: name.into(),
            token: String::new(),
            datasets: vec![v1::DatasetInfo {
                name: dataset.name().into(),
                train_examples: 100,
                test_examples: 20,
                feature_names: data.feature_names.clone(),
                class_names: data.class_names.clone(),
            }],
            model_kinds: builtin_kinds().0,
            task_kinds: builtin_kinds().1,
        };
        Self::with_first(url, client_message::Msg::Hello(hello)).await
    }

    pub async fn with_first(url: &str, first: client_message::Msg) -> Self {
        Self::try_with_first(url, first).await.unwrap()
    }

    /// Opens a stream with `first` as its first message; the coordinator may refuse the stream.
    pub async fn try_with_first(
        url: &str,
        first: client_message::Msg,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(ClientMessage { msg: Some(first) }).await.unwrap();
        let mut client = FederationClient::new(channel(url).await);
        let rx = client.connect(ReceiverStream::new(rx)).await?.into_inner();
        Ok(RawPeer { tx, rx })
    }

    pub async fn next(&mut self) -> Option<coordinator_message::Msg> {
        tokio::time::timeout(Duration::from_secs(30), self.rx.message())
            .await
            .expect("nothing from the coordinator within 30 s")
            .ok()
            .flatten()
            .and_then(|m| m.msg)
    }

    pub async fn send_result(&self, result: v1::TaskResult) {
        let _ = self
            .tx
            .send(ClientMessage {
                msg: Some(client_message::Msg::Result(result)),
            })
            .await;
    }
}

/// Path of a workspace binary, built once per test run so it is never stale.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    // target/<profile>/deps/integration-HASH -> target/<profile>/NAME
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        // The workspace's binaries and examples (`client/examples/custom_trainer` for the
        // conformance test): the same packages, so the same dependency features, as `cargo test
        // --workspace`, whose build this one then reuses. Two packages alone would resolve other
        // features and compile much of the dependency graph a second time.
        cmd.args(["build", "--quiet", "--workspace", "--bins", "--examples"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("cannot run cargo to build the binaries");
        assert!(
            status.success(),
            "building the binaries and examples failed"
        );
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} not found", path.display());
    path
}

/// A TCP relay to a coordinator that a test can cut as a pulled cable would: while cut, the
/// connections it carries stall for good (nothing is delivered, nothing is closed, so neither
/// end learns of it from TCP) and new connections are refused; once restored, new connections
/// pass again.
pub struct CutProxy {
    pub url: String,
    cut: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
}

impl CutProxy {
    /// Relays 127.0.0.1:0 to `target` (an `http://host:port` URL).
    pub async fn start(target: &str) -> Self {
        use std::sync::atomic::Ordering;
        let target = target.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = CancellationToken::new();
        let (c, s) = (cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let inbound = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => match a { Ok((sock, _)) => sock, Err(_) => continue },
                };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, c.clone(), s.clone()));
                tokio::spawn(pump(ro, wi, c.clone(), s.clone()));
            }
        });
        CutProxy { url, cut, stop }
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies `from` to `to` until either closes; once the link is cut it holds both open and
/// silent until the proxy is dropped.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
        };
        if cut.load(std::sync::atomic::Ordering::SeqCst) {
            stop.cancelled().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A finished simulated job; its run folder lives as long as this value.
pub struct Simulated {
    pub outcome: shoal_coordinator::simulate::SimOutcome,
    _runs: tempfile::TempDir,
}

/// Runs `o` quietly, its run folders in a temporary directory, and insists that the job finishes
/// (the panic names the job's error, after `context`).
pub async fn simulate_finished(
    mut o: shoal_coordinator::simulate::SimulateOptions,
    context: &str,
) -> Simulated {
    let runs = tempfile::tempdir().unwrap();
    o.out = runs.path().to_path_buf();
    o.quiet = true;
    let outcome = shoal_coordinator::simulate::simulate(o).await.unwrap();
    assert_eq!(
        outcome.status,
        v1::JobStatus::Finished,
        "{context}: {}",
        outcome.job.error
    );
    Simulated {
        outcome,
        _runs: runs,
    }
}
