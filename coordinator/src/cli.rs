//! The `shoal-coordinator` command line: `serve`, `simulate`, `partition` and `job ...`.
//!
//! Parsing lives here so `main.rs` stays a few lines and tests can drive [`run_cli`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use shoal_proto::v1::{self, jobs_client::JobsClient};
use shoal_shared::data::builtin::Builtin;
use shoal_shared::data::partition::Partitioner;
use shoal_shared::data::{csv, stratified_split, Dataset};
use tokio::net::TcpListener;

use crate::coordinator::{round_from_wire, Coordinator, CoordinatorConfig};
use crate::report::{round_line, LogFormat};
use crate::simulate::{simulate, SimulateOptions};
use crate::spec::JobSpec;
use crate::state::Store;

/// Shoal's coordinator: serves the federation, runs jobs, and simulates whole federations on one
/// machine.
#[derive(Debug, Parser)]
#[command(name = "shoal-coordinator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the federation: clients connect here, jobs run here.
    Serve(ServeArgs),
    /// Run a coordinator and N clients in this process over loopback gRPC and run one job.
    Simulate(SimulateArgs),
    /// Split a dataset into per-client CSV shards plus test.csv, and print who holds what.
    Partition(PartitionArgs),
    /// Submit, inspect, watch and cancel jobs on a running coordinator.
    #[command(subcommand)]
    Job(JobCommand),
    /// Run a study: many simulations, one table and chart.
    #[command(subcommand)]
    Study(StudyCommand),
    /// Measure: print throughput figures against baselines from the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Ask a coordinator whether it serves (gRPC health); exit 0 if so, 1 if not. For container
    /// healthchecks and scripts.
    Health(HealthArgs),
    /// Make a development CA, a server certificate and one certificate per client (PEM files)
    /// for TLS and mutual TLS. Use a real CA in production.
    Certs(CertsArgs),
    /// Make a token per client and an admin token, and the hash files the coordinator reads
    /// (--client-tokens, --admin-tokens).
    Tokens(TokensArgs),
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub clients: ClientNames,
    /// Names and addresses clients reach the coordinator by (comma-separated): the server
    /// certificate is valid for these.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,coordinator"
    )]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TokensArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub clients: ClientNames,
}

/// Whom `certs` and `tokens` make credentials for.
#[derive(Debug, Args)]
pub struct ClientNames {
    /// For clients client-0 ... client-(N-1).
    #[arg(long, default_value_t = 0)]
    pub clients: usize,
    /// Client names instead of client-I (comma-separated); each becomes its certificate's or
    /// token's name.
    #[arg(long, value_delimiter = ',')]
    pub client_names: Vec<String>,
}

impl ClientNames {
    /// `--clients N` as client-0 ... client-(N-1), or the names given.
    fn resolve(&self) -> anyhow::Result<Vec<String>> {
        match (self.clients, self.client_names.is_empty()) {
            (0, true) => bail!("give --clients N or --client-names A,B,..."),
            (n, true) => Ok((0..n).map(|i| format!("client-{i}")).collect()),
            (0, false) => Ok(self.client_names.clone()),
            _ => bail!("give --clients or --client-names, not both"),
        }
    }
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The coordinator's address.
    #[arg(
        long,
        env = "SHOAL_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub tls: shoal_client::TlsFiles,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Histogram building throughput, and a federated boosting job's time per round and per tree.
    Gbdt {
        /// Rounds of the federated job.
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        /// Repetitions of the histogram measurement.
        #[arg(long, default_value_t = 200)]
        repeats: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum StudyCommand {
    /// Digits over α ∈ {0.1, 0.5, 1.0, iid} × {fedavg, fedprox, fedadam, scaffold, fedmedian}:
    /// final and best test accuracy as a markdown table, accuracy per round as a chart.
    Noniid {
        #[arg(long, default_value_t = 50)]
        rounds: u32,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Model: logreg or mlp.
        #[arg(long, default_value = "mlp")]
        model: String,
        /// Hidden layer widths of the mlp.
        #[arg(long, default_value = "64")]
        hidden: String,
        /// Strategies to compare (comma-separated).
        #[arg(long, default_value = "fedavg,fedprox,fedadam,scaffold,fedmedian")]
        strategies: String,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Where noniid.md, noniid.csv, noniid.svg and the run folders go.
        #[arg(long, default_value = "study")]
        out: PathBuf,
    },
    /// The original demo done right: 3 seed-fl clients with different concepts; each one's
    /// local-only forest vs the federated forest vs a centralized forest, on one held-out set.
    SeedForest {
        /// Trees per local-only forest (each client contributes as many to the federated one).
        #[arg(long, default_value_t = 50)]
        trees: u32,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Where seed-forest.md and the run folder go.
        #[arg(long, default_value = "study")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SHOAL_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: String,
    /// Directory of the coordinator's state (SQLite).
    #[arg(long, env = "SHOAL_STATE_DIR", default_value = "shoal-state")]
    pub state_dir: PathBuf,
    /// Where run folders are written (`OUT/<job-id>/`).
    #[arg(long, env = "SHOAL_OUT", default_value = "runs")]
    pub out: PathBuf,
    /// Format of the round lines on stdout.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Submit this job file as soon as the server is up (handy for containers); only on a fresh
    /// state dir: a restart resumes the running jobs instead.
    #[arg(long, env = "SHOAL_JOB")]
    pub job: Option<PathBuf>,
    /// Exit once every job has ended (status 0 if all finished, 1 otherwise): a container that
    /// runs one job and stops, as the docker-compose rehearsal does.
    #[arg(long, env = "SHOAL_EXIT_WHEN_DONE")]
    pub exit_when_done: bool,
    /// Serve TLS with this certificate (PEM); needs --tls-key.
    #[arg(long, env = "SHOAL_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key (PEM) of --tls-cert.
    #[arg(long, env = "SHOAL_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by this CA (PEM), whose name is
    /// the client's name. Needs --tls-cert.
    #[arg(
        long,
        env = "SHOAL_CLIENT_CA",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub client_ca: Option<PathBuf>,
    /// Clients must present a token: this file holds `name sha256` lines (`shoal-coordinator
    /// tokens` writes it).
    #[arg(long, env = "SHOAL_CLIENT_TOKENS", value_name = "PATH")]
    pub client_tokens: Option<PathBuf>,
    /// The Jobs service needs an admin token: this file holds their `name sha256` lines.
    /// Required when clients must authenticate.
    #[arg(long, env = "SHOAL_ADMIN_TOKENS", value_name = "PATH")]
    pub admin_tokens: Option<PathBuf>,
    /// Most clients connected at once.
    #[arg(long, env = "SHOAL_MAX_CLIENTS", default_value_t = 1000)]
    pub max_clients: usize,
    /// Largest gRPC message received or sent, in bytes.
    #[arg(long, env = "SHOAL_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Largest model a job may train, in parameters (tensor elements).
    #[arg(long, env = "SHOAL_MAX_TENSOR_ELEMENTS", default_value_t = 16 * 1024 * 1024)]
    pub max_tensor_elements: usize,
    /// Seconds a new stream has to send its Hello.
    #[arg(
        long,
        env = "SHOAL_HELLO_TIMEOUT",
        default_value_t = 10.0,
        value_name = "SECS"
    )]
    pub hello_timeout_secs: f64,
    /// Seconds of silence after which a client's stream is dropped.
    #[arg(
        long,
        env = "SHOAL_HEARTBEAT_TIMEOUT",
        default_value_t = 60.0,
        value_name = "SECS"
    )]
    pub heartbeat_timeout_secs: f64,
    /// Failed authentication attempts an address may make per minute, each logged; past them
    /// its failures are answered ResourceExhausted, unlogged, until the minute is over.
    #[arg(long, env = "SHOAL_AUTH_FAILURES_PER_MINUTE", default_value_t = 10)]
    pub auth_failures_per_minute: u32,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// A job file (TOML); the flags below override its fields.
    #[arg(long)]
    pub job: Option<PathBuf>,
    /// Built-in dataset: digits, seed-fl, iris, winequality, multimodal, signals, classification [default: digits].
    #[arg(long)]
    pub dataset: Option<String>,
    /// Number of clients.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// How the dataset is split over clients: iid, dirichlet:ALPHA, shards:K, quantity:ALPHA
    /// (seed-fl and signals ignore it: each client gets its own concept or frequency band).
    #[arg(long, default_value = "dirichlet:0.5")]
    pub partition: String,
    /// Model: logreg, mlp, forest, gbdt, denoiser (settings go in a job file's model section) [default: logreg].
    #[arg(long)]
    pub model: Option<String>,
    /// Hidden layer widths of an mlp, e.g. 64 or 128,64 (implies --model mlp).
    #[arg(long, value_name = "W1,W2,...")]
    pub hidden: Option<String>,
    /// Aggregation strategy with its default hyperparameters (set them in a job file's strategy section):
    /// fedavg, fedavgm, fedprox, fedadagrad, fedadam, fedyogi, fedmedian, fedtrimmedavg, krum,
    /// multikrum, scaffold [default: fedavg].
    #[arg(long)]
    pub strategy: Option<String>,
    /// TEST ONLY: make the first N clients malicious (see --attack).
    #[arg(long, default_value_t = 0)]
    pub attackers: usize,
    /// TEST ONLY: how malicious clients corrupt their updates: sign-flip, scale:K, gaussian:SIGMA.
    #[arg(long, default_value = "sign-flip", value_name = "MODE")]
    pub attack: String,
    /// Number of rounds [default: 30].
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Seed of partitioning, sampling, initialisation and local training [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the run folder is written (`OUT/<job-id>/`).
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// Keep the coordinator's state in this directory (default: in memory).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Format of the round lines on stdout.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct PartitionArgs {
    /// A built-in dataset (digits, seed-fl, iris, winequality, multimodal, signals, classification) or a CSV file.
    #[arg(long)]
    pub dataset: String,
    /// Label column when --dataset is a CSV file (default: the last column).
    #[arg(long)]
    pub label_column: Option<String>,
    /// Number of clients.
    #[arg(long)]
    pub clients: usize,
    /// iid, dirichlet:ALPHA, shards:K or quantity:ALPHA.
    #[arg(long, default_value = "dirichlet:0.5")]
    pub scheme: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory: client-0.csv ... client-(N-1).csv and test.csv.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct Remote {
    /// Coordinator address.
    #[arg(
        long,
        env = "SHOAL_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    #[command(flatten)]
    pub tls: shoal_client::TlsFiles,
    /// A file holding an admin token, for a coordinator started with --admin-tokens (or set
    /// SHOAL_ADMIN_TOKEN).
    #[arg(long, env = "SHOAL_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job file (TOML, or JSON when the name ends in .json).
    Submit {
        file: PathBuf,
        /// Follow the job's rounds until it ends.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one job.
    Status {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List all jobs.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a job's rounds as they happen; exits 0 if it finishes, 1 if it fails or is cancelled.
    Watch {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancel a job.
    Cancel {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run_cli(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(a) => serve_cmd(a).await,
        Command::Health(a) => health_cmd(&a).await,
        Command::Certs(a) => {
            let clients = a.clients.resolve()?;
            let f = crate::auth::generate_certs(&a.out, &a.names, &clients)?;
            println!(
                "wrote the CA ({}), the server certificate for {} ({}, {}) and {} client certificates (admin.pem is the operator's) to {}",
                f.ca.display(),
                a.names.join(", "),
                f.server_cert.display(),
                f.server_key.display(),
                f.clients.len(),
                a.out.display()
            );
            println!("keep ca.key offline: whoever holds it can make client certificates");
            Ok(0)
        }
        Command::Tokens(a) => {
            let clients = a.clients.resolve()?;
            let f = crate::auth::generate_tokens(&a.out, &clients)?;
            println!(
                "wrote {} client tokens and admin.token to {}; the coordinator reads {} (--client-tokens) and {} (--admin-tokens)",
                clients.len(),
                a.out.display(),
                f.client_hashes.display(),
                f.admin_hashes.display()
            );
            Ok(0)
        }
        Command::Simulate(a) => simulate_cmd(a).await,
        Command::Partition(a) => partition_cmd(&a).map(|_| 0),
        Command::Job(j) => job_cmd(j).await,
        Command::Study(s) => study_cmd(s).await.map(|_| 0),
        Command::Bench(BenchCommand::Gbdt { rounds, repeats }) => {
            if rounds == 0 || repeats == 0 {
                bail!("--rounds and --repeats must be at least 1");
            }
            crate::bench::gbdt(rounds, repeats).await.map(|_| 0)
        }
    }
}

async fn study_cmd(cmd: StudyCommand) -> anyhow::Result<()> {
    match cmd {
        StudyCommand::Noniid {
            rounds,
            clients,
            model,
            hidden,
            strategies,
            seed,
            out,
        } => {
            let mut study = crate::bench::study::NonIidStudy::default_grid(out);
            study.model = match model.as_str() {
                "mlp" => shoal_shared::models::ModelSpec::from_parts(
                    "mlp",
                    &shoal_shared::models::ModelSpec::parse_hidden(&hidden)?,
                )?,
                other => shoal_shared::models::ModelSpec::from_name(other)?,
            };
            study.strategies = strategies
                .split(',')
                .map(|n| shoal_shared::strategy::StrategySpec::from_name(n.trim()))
                .collect::<Result<_, _>>()?;
            (study.rounds, study.clients, study.seed) = (rounds, clients, seed);
            if rounds == 0 || clients == 0 {
                bail!("--rounds and --clients must be at least 1");
            }
            crate::bench::study::run_noniid(&study).await?;
            Ok(())
        }
        StudyCommand::SeedForest {
            trees,
            rounds,
            seed,
            out,
        } => {
            let study = crate::bench::study::SeedForestStudy {
                trees,
                rounds,
                seed,
                out,
            };
            crate::bench::study::run_seed_forest(&study).await?;
            Ok(())
        }
    }
}

async fn health_cmd(a: &HealthArgs) -> anyhow::Result<i32> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    let limit = std::time::Duration::from_secs(a.timeout_secs.max(1));
    let check = async {
        let tls = a.tls.load()?;
        let channel = shoal_client::endpoint_with(&a.coordinator, tls.as_ref())?
            .connect_timeout(limit)
            .connect()
            .await?;
        let reply = HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        anyhow::Ok(reply.into_inner().status)
    };
    match tokio::time::timeout(limit, check).await {
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => {
            println!("serving");
            Ok(0)
        }
        Ok(Ok(status)) => {
            println!("not serving (status {status})");
            Ok(1)
        }
        Ok(Err(e)) => {
            println!("unreachable: {}", e.to_string().replace('\n', " "));
            Ok(1)
        }
        Err(_) => {
            println!("no answer within {}s", limit.as_secs());
            Ok(1)
        }
    }
}

/// Resolves once the coordinator has had a job and none is queued or running any more; returns
/// whether every job finished.
async fn all_jobs_done(coord: std::sync::Arc<Coordinator>) -> bool {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if let Ok(jobs) = coord.list() {
            let active = jobs.iter().any(|j| {
                j.status == v1::JobStatus::Queued as i32
                    || j.status == v1::JobStatus::Running as i32
            });
            if !jobs.is_empty() && !active {
                return jobs
                    .iter()
                    .all(|j| j.status == v1::JobStatus::Finished as i32);
            }
        }
    }
}

/// The coordinator's settings from `serve`'s flags; every file is read now, so a bad one stops
/// the start with its name.
fn serve_config(a: &ServeArgs) -> anyhow::Result<CoordinatorConfig> {
    use crate::auth::{server_tls, AuthConfig, TokenSet};
    let secs = |v: f64, flag: &str| -> anyhow::Result<std::time::Duration> {
        if !(v.is_finite() && v > 0.0 && v < 1e7) {
            bail!("{flag} {v}: give a positive number of seconds");
        }
        Ok(std::time::Duration::from_secs_f64(v))
    };
    if a.max_clients == 0 || a.max_message_bytes < 1024 || a.max_tensor_elements == 0 {
        bail!("--max-clients and --max-tensor-elements must be at least 1, --max-message-bytes at least 1024");
    }
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(server_tls(c, k, a.client_ca.as_deref())?),
        _ => None,
    };
    let auth = AuthConfig {
        client_tokens: a.client_tokens.as_deref().map(TokenSet::load).transpose()?,
        client_certs: a.client_ca.is_some(),
        admin_tokens: a.admin_tokens.as_deref().map(TokenSet::load).transpose()?,
    };
    auth.check()?;
    if !auth.clients_authenticated() {
        tracing::warn!("clients are not authenticated: anyone who reaches this port can join the federation (see --client-tokens, --client-ca)");
    }
    if auth.admin_tokens.is_none() {
        tracing::warn!("the Jobs service is open: anyone who reaches this port can submit and read jobs (see --admin-tokens)");
    }
    if tls.is_none() && (auth.client_tokens.is_some() || auth.admin_tokens.is_some()) {
        tracing::warn!("tokens travel in plaintext without TLS (see --tls-cert)");
    }
    Ok(CoordinatorConfig {
        runs_dir: a.out.clone(),
        log_format: a.log_format,
        max_message_bytes: a.max_message_bytes,
        max_tensor_elements: a.max_tensor_elements,
        max_clients: a.max_clients,
        hello_timeout: secs(a.hello_timeout_secs, "--hello-timeout-secs")?,
        heartbeat_timeout: secs(a.heartbeat_timeout_secs, "--heartbeat-timeout-secs")?,
        auth,
        tls,
        auth_failures_per_minute: a.auth_failures_per_minute,
        ..CoordinatorConfig::default()
    })
}

async fn serve_cmd(a: ServeArgs) -> anyhow::Result<i32> {
    let initial = match &a.job {
        Some(path) => Some(read_spec(path)?),
        None => None,
    };
    let config = serve_config(&a)?;
    let store = Store::open(&a.state_dir)?;
    let coord = Coordinator::new(config, store)?;
    let listener = TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    tracing::info!(addr = %listener.local_addr()?, state = %a.state_dir.display(), "coordinator listening");
    #[cfg(unix)]
    reload_tokens_on_hangup(&coord, a.client_tokens.clone(), a.admin_tokens.clone())?;
    // A restart on the same state dir goes on with the jobs the last process left running,
    // and does not submit --job a second time.
    let fresh = coord.job_count()? == 0;
    for id in coord.resume_interrupted()? {
        println!("resumed job {id}");
    }
    if let Some(spec) = initial {
        if fresh {
            let row = coord.submit(spec)?;
            println!("submitted job {} (run folder {})", row.id, row.run_dir);
        } else {
            println!("--job not submitted: the state dir already holds jobs (this is a restart)");
        }
    }
    if a.exit_when_done {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let watched = coord.clone();
        tokio::spawn(async move {
            let _ = tx.send(all_jobs_done(watched).await);
        });
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = ok.clone();
        let stop = async move {
            tokio::select! {
                _ = shoal_client::shutdown_signal() => {}
                done = rx => {
                    flag.store(done.unwrap_or(false), std::sync::atomic::Ordering::SeqCst);
                    println!("every job has ended; exiting (--exit-when-done)");
                }
            }
        };
        crate::server::serve(listener, coord, stop).await?;
        return Ok(if ok.load(std::sync::atomic::Ordering::SeqCst) {
            0
        } else {
            1
        });
    }
    crate::server::serve(listener, coord, shoal_client::shutdown_signal()).await?;
    Ok(0)
}

/// On SIGHUP, reads the token files again and puts them in force: how tokens are added, rotated
/// and revoked without a restart. A file that does not load leaves the old sets in force.
#[cfg(unix)]
fn reload_tokens_on_hangup(
    coord: &std::sync::Arc<Coordinator>,
    client: Option<PathBuf>,
    admin: Option<PathBuf>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup()).context("cannot watch for SIGHUP")?;
    let coord = coord.clone();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if client.is_none() && admin.is_none() {
                tracing::warn!("SIGHUP: nothing to reload (no --client-tokens or --admin-tokens)");
                continue;
            }
            match reload_tokens(&coord, client.as_deref(), admin.as_deref()) {
                Ok(dropped) => tracing::info!(?dropped, "SIGHUP: token files reloaded"),
                Err(e) => tracing::error!(
                    "SIGHUP: token files not reloaded, the old ones stay in force: {e}"
                ),
            }
        }
    });
    Ok(())
}

/// Reads both token files, then puts them in force together; returns the clients disconnected.
#[cfg(unix)]
fn reload_tokens(
    coord: &Coordinator,
    client: Option<&Path>,
    admin: Option<&Path>,
) -> crate::error::Result<Vec<String>> {
    use crate::auth::TokenSet;
    let client = client.map(TokenSet::load).transpose()?;
    let admin = admin.map(TokenSet::load).transpose()?;
    coord.reload_tokens(client, admin)
}

async fn simulate_cmd(a: SimulateArgs) -> anyhow::Result<i32> {
    let mut spec = match &a.job {
        Some(path) => read_spec(path)?,
        None => JobSpec::from_toml("kind = \"train\"\nrounds = 30\n")?,
    };
    if let Some(d) = &a.dataset {
        spec.dataset = d.clone();
    }
    if let Some(m) = &a.model {
        spec.model = shoal_shared::models::ModelSpec::from_name(m)?;
    }
    if let Some(h) = &a.hidden {
        let hidden = shoal_shared::models::ModelSpec::parse_hidden(h)?;
        if a.model.as_deref().is_some_and(|m| m != "mlp") {
            bail!("--hidden applies to --model mlp only");
        }
        spec.model =
            shoal_shared::models::ModelSpec::Mlp(shoal_shared::models::sgd::MlpSpec { hidden });
    }
    if let Some(s) = &a.strategy {
        spec.strategy = shoal_shared::strategy::StrategySpec::from_name(s)?;
    }
    if let Some(r) = a.rounds {
        spec.rounds = r;
    }
    if let Some(s) = a.seed {
        spec.seed = s;
    }
    // The flags may have made a spec the file alone was not (a denoiser on a train job, ...).
    spec.check()?;
    let scheme: Partitioner = a.partition.parse().context("--partition")?;
    let attack = if a.attackers > 0 {
        if a.attackers > a.clients {
            bail!(
                "--attackers {} exceeds --clients {}",
                a.attackers,
                a.clients
            );
        }
        Some(
            a.attack
                .parse::<shoal_client::Attack>()
                .map_err(anyhow::Error::msg)?,
        )
    } else {
        None
    };
    let dataset: Builtin = spec.dataset.parse().map_err(|e| {
        anyhow::anyhow!(
            "{e}; simulate runs built-in datasets (for your own CSV use `partition`, `serve` and `shoal-client`)"
        )
    })?;
    let outcome = simulate(SimulateOptions {
        spec,
        dataset,
        clients: a.clients,
        scheme,
        out: a.out,
        state_dir: a.state_dir,
        log_format: a.log_format,
        attackers: a.attackers,
        attack,
        quiet: false,
    })
    .await?;
    Ok(if outcome.status == v1::JobStatus::Finished {
        0
    } else {
        1
    })
}

/// Reads a job file: TOML, or JSON when it ends in `.json`. Errors name the file.
pub fn read_spec(path: &Path) -> anyhow::Result<JobSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read job file {}", path.display()))?;
    let spec = if path.extension().is_some_and(|e| e == "json") {
        JobSpec::from_json(&text)
    } else {
        JobSpec::from_toml(&text)
    };
    spec.with_context(|| format!("job file {}", path.display()))
}

fn partition_cmd(a: &PartitionArgs) -> anyhow::Result<()> {
    let scheme: Partitioner = a.scheme.parse().context("--scheme")?;
    if a.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let (shards, test): (Vec<Dataset>, Dataset) = match a.dataset.parse::<Builtin>() {
        Ok(b) => (b.shards(&scheme, a.clients, a.seed)?, b.holdout()?),
        Err(unknown) => {
            let path = Path::new(&a.dataset);
            if !path.exists() {
                bail!("{unknown}, nor a CSV file that exists");
            }
            let data = csv::load_csv(path, a.label_column.as_deref())?;
            let (train, test) = stratified_split(
                &data.labels,
                data.n_classes(),
                shoal_shared::data::builtin::HOLDOUT_FRACTION,
                a.seed,
            );
            let pool = data.select(&train);
            let parts = scheme.partition(&pool.labels, pool.n_classes(), a.clients, a.seed)?;
            (
                parts.iter().map(|p| pool.select(p)).collect(),
                data.select(&test),
            )
        }
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    for (i, s) in shards.iter().enumerate() {
        s.to_csv(&a.out.join(format!("client-{i}.csv")))?;
    }
    test.to_csv(&a.out.join("test.csv"))?;
    print!("{}", partition_table(&shards, &test));
    println!(
        "wrote {} shards and test.csv to {}",
        shards.len(),
        a.out.display()
    );
    Ok(())
}

/// Rows and label histogram per client, one row per client.
pub fn partition_table(shards: &[Dataset], test: &Dataset) -> String {
    let classes = &test.class_names;
    let width = classes.iter().map(String::len).max().unwrap_or(1).max(4);
    let mut out = format!("{:<10}{:>6}", "client", "rows");
    for c in classes {
        out.push_str(&format!(" {c:>width$}"));
    }
    out.push('\n');
    let mut row = |label: String, d: &Dataset| {
        out.push_str(&format!("{label:<10}{:>6}", d.n_rows()));
        for n in d.class_counts() {
            out.push_str(&format!(" {n:>width$}"));
        }
        out.push('\n');
    };
    for (i, s) in shards.iter().enumerate() {
        row(format!("client-{i}"), s);
    }
    row("test".into(), test);
    out
}

/// Adds the admin token, when there is one, to every Jobs call.
#[derive(Debug, Clone)]
pub struct AdminToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for AdminToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A Jobs client that sends the admin token.
pub type AdminJobs = JobsClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AdminToken>,
>;

/// Connects to the Jobs service at `url`, with TLS when given and the admin token on every call.
pub async fn connect_jobs_with(
    url: &str,
    tls: Option<&shoal_client::ClientTls>,
    token: Option<&str>,
) -> anyhow::Result<AdminJobs> {
    let endpoint = shoal_client::endpoint_with(url, tls)?;
    let header = token
        .map(|t| format!("Bearer {}", t.trim()).parse())
        .transpose()
        .map_err(|_| anyhow::anyhow!("the admin token holds characters a header cannot carry"))?;
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the coordinator at {url}: {}",
            shoal_client::connection::error_chain(&e)
        )
    })?;
    Ok(JobsClient::with_interceptor(channel, AdminToken(header)))
}

async fn connect_jobs(remote: &Remote) -> anyhow::Result<AdminJobs> {
    let tls = remote.tls.load()?;
    let token = match (&remote.admin_token_file, std::env::var("SHOAL_ADMIN_TOKEN")) {
        (Some(p), _) => Some(shoal_client::tls::read_token_file(p, "--admin-token-file")?),
        (None, Ok(t)) if !t.trim().is_empty() => Some(t),
        _ => None,
    };
    connect_jobs_with(&remote.coordinator, tls.as_ref(), token.as_deref()).await
}

fn status_name(s: i32) -> &'static str {
    match v1::JobStatus::try_from(s).unwrap_or(v1::JobStatus::Unspecified) {
        v1::JobStatus::Queued => "queued",
        v1::JobStatus::Running => "running",
        v1::JobStatus::Finished => "finished",
        v1::JobStatus::Failed => "failed",
        v1::JobStatus::Cancelled => "cancelled",
        v1::JobStatus::Unspecified => "unknown",
    }
}

fn describe(j: &v1::JobInfo) -> String {
    let mut s = format!(
        "{}  {}  {}  rounds {}/{}",
        j.job_id,
        j.kind,
        status_name(j.status),
        j.rounds_done,
        j.rounds_total
    );
    if let Some(r) = &j.last_round {
        if let Some(a) = r.test_accuracy {
            s.push_str(&format!("  test_acc {a:.3}"));
        }
        if let Some(a) = r.fed_accuracy {
            s.push_str(&format!("  fed_acc {a:.3}"));
        }
    }
    if !j.error.is_empty() {
        s.push_str(&format!("  error: {}", j.error));
    }
    s
}

fn rpc_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

async fn job_cmd(cmd: JobCommand) -> anyhow::Result<i32> {
    match cmd {
        JobCommand::Submit {
            file,
            watch,
            remote,
        } => {
            // Parse locally first: a bad file gets an error naming it, before any network.
            read_spec(&file)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read job file {}", file.display()))?;
            let format = if file.extension().is_some_and(|e| e == "json") {
                "json"
            } else {
                "toml"
            };
            let mut c = connect_jobs(&remote).await?;
            let info = c
                .submit(v1::SubmitRequest {
                    spec: text,
                    format: format.into(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!(
                "submitted job {} (run folder {})",
                info.job_id, info.run_dir
            );
            if watch {
                return watch_job(&mut c, &info.job_id).await;
            }
            Ok(0)
        }
        JobCommand::Status { id, remote } => {
            let mut c = connect_jobs(&remote).await?;
            let j = c
                .get(v1::GetRequest { job_id: id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!("{}", describe(&j));
            println!("run folder: {}", j.run_dir);
            Ok(0)
        }
        JobCommand::List { remote } => {
            let mut c = connect_jobs(&remote).await?;
            let list = c
                .list(v1::ListRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            if list.jobs.is_empty() {
                println!("no jobs");
            }
            for j in &list.jobs {
                println!("{}", describe(j));
            }
            Ok(0)
        }
        JobCommand::Watch { id, remote } => {
            let mut c = connect_jobs(&remote).await?;
            watch_job(&mut c, &id).await
        }
        JobCommand::Cancel { id, remote } => {
            let mut c = connect_jobs(&remote).await?;
            let j = c
                .cancel(v1::CancelRequest { job_id: id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!("cancelling {}", describe(&j));
            Ok(0)
        }
    }
}

/// Prints round lines until the job ends; 0 when it finished.
pub async fn watch_job(c: &mut AdminJobs, id: &str) -> anyhow::Result<i32> {
    let mut stream = c
        .watch(v1::WatchRequest {
            job_id: id.to_string(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    while let Some(ev) = stream.message().await.map_err(rpc_error)? {
        match ev.event {
            Some(v1::watch_event::Event::Round(r)) => {
                println!("{}", round_line(&round_from_wire(&r)))
            }
            Some(v1::watch_event::Event::Finished(j)) => {
                println!("{}", describe(&j));
                return Ok(i32::from(j.status != v1::JobStatus::Finished as i32));
            }
            None => {}
        }
    }
    bail!("the coordinator closed the watch before job {id} ended")
}
