//! `shoal-client`: parses flags, sets up tracing and signals, and runs [`shoal_client::run`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use shoal_client::{Catalog, ClientConfig};
use shoal_shared::data::builtin::Builtin;
use shoal_shared::data::partition::Partitioner;

/// A Shoal federation client: holds private data, trains and evaluates locally on the
/// coordinator's request, and sends back only parameters and metrics.
#[derive(Debug, Parser)]
#[command(name = "shoal-client", version, about)]
struct Args {
    /// Coordinator address, e.g. http://10.0.0.5:50051.
    #[arg(
        long,
        env = "SHOAL_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// This client's unique name in the federation (default: `shard-I` with --shard, else
    /// HOST-PID).
    #[arg(long, env = "SHOAL_CLIENT_NAME")]
    name: Option<String>,
    /// A CSV dataset to serve, as NAME=PATH.csv (repeatable).
    #[arg(
        long = "data",
        value_name = "NAME=PATH.csv",
        env = "SHOAL_DATA",
        value_delimiter = ','
    )]
    data: Vec<String>,
    /// Label column of the CSV files (default: the last column).
    #[arg(long, env = "SHOAL_LABEL_COLUMN")]
    label_column: Option<String>,
    /// Serve this client's shard of a built-in dataset instead (digits, seed-fl, iris, winequality, multimodal, signals, classification).
    #[arg(long, env = "SHOAL_BUILTIN")]
    builtin: Option<String>,
    /// How the built-in dataset is split over clients: iid, dirichlet:ALPHA, shards:K, quantity:ALPHA.
    #[arg(long, env = "SHOAL_PARTITION", default_value = "dirichlet:0.5")]
    partition: String,
    /// Which shard this client holds, as I/N (0-based), e.g. 3/10.
    #[arg(long, env = "SHOAL_SHARD")]
    shard: Option<String>,
    /// Seed of the partition and of the local train/test split.
    #[arg(long, env = "SHOAL_SEED", default_value_t = 42)]
    seed: u64,
    /// TEST ONLY, for robustness experiments: corrupt every update this client sends
    /// (sign-flip, scale:K, gaussian:SIGMA). Never use in a real federation.
    #[arg(long, env = "SHOAL_ATTACK", value_name = "MODE")]
    attack: Option<String>,
    /// Exit with an error after this many seconds without a connection (default: keep trying).
    #[arg(long, env = "SHOAL_GIVE_UP_AFTER", value_name = "SECS")]
    give_up_after: Option<u64>,
    /// Longest wait between reconnect attempts; waits double from 0.2 s up to this, with jitter.
    #[arg(
        long,
        env = "SHOAL_MAX_BACKOFF",
        value_name = "SECS",
        default_value_t = 10.0
    )]
    max_backoff_secs: f64,
    /// Largest gRPC message received or sent, in bytes. The Hello says it: a job whose model does
    /// not fit is not sent here, and this client is told why.
    #[arg(long, env = "SHOAL_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Largest task taken in chunks, in bytes: a model over the message limit travels in 1 MiB
    /// chunks up to this size (the Hello says it); 0 takes no chunks.
    #[arg(long, env = "SHOAL_MAX_TRANSFER_BYTES", default_value_t = shoal_client::connection::DEFAULT_MAX_TRANSFER_BYTES)]
    max_transfer_bytes: u64,
    /// Run this many client sessions from one process, named NAME-00000, NAME-00001, ..., all
    /// holding the same data, over shared connections (64 sessions each): a load test of a
    /// coordinator with thousands of real sessions. Each session is a whole client.
    #[arg(long, default_value_t = 1, value_name = "N")]
    sessions: usize,
    #[command(flatten)]
    tls: shoal_client::TlsFiles,
    /// A file holding this client's token (for a coordinator started with --client-tokens).
    #[arg(long, env = "SHOAL_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Write each dataset's local train and test split into DIR as NAME.train.csv and
    /// NAME.test.csv, then exit without connecting: the exact rows this client would use, e.g.
    /// for a client in another language that should hold the same shard.
    #[arg(long, value_name = "DIR")]
    export: Option<PathBuf>,
}

fn parse_shard(s: &str) -> anyhow::Result<(usize, usize)> {
    let (i, n) = s
        .split_once('/')
        .with_context(|| format!("--shard `{s}`: expected I/N, e.g. 3/10"))?;
    let i: usize = i
        .trim()
        .parse()
        .with_context(|| format!("--shard `{s}`: `{i}` is not a number"))?;
    let n: usize = n
        .trim()
        .parse()
        .with_context(|| format!("--shard `{s}`: `{n}` is not a number"))?;
    if n == 0 || i >= n {
        bail!("--shard `{s}`: I must be in 0..N (0-based) and N at least 1");
    }
    Ok((i, n))
}

fn build(args: &Args) -> anyhow::Result<ClientConfig> {
    let mut catalog = Catalog::new();
    let mut default_name = None;
    for item in &args.data {
        let (name, path) = item
            .split_once('=')
            .with_context(|| format!("--data `{item}`: expected NAME=PATH.csv"))?;
        if name.is_empty() {
            bail!("--data `{item}`: the dataset name before `=` is empty");
        }
        catalog.add_csv(
            name,
            &PathBuf::from(path),
            args.label_column.as_deref(),
            args.seed,
        )?;
    }
    if let Some(b) = &args.builtin {
        let dataset: Builtin = b.parse()?;
        let scheme: Partitioner = args.partition.parse()?;
        let shard = args
            .shard
            .as_deref()
            .context("--builtin needs --shard I/N (which part of the dataset this client holds)")?;
        let (i, n) = parse_shard(shard)?;
        catalog.add_builtin(dataset, &scheme, i, n, args.seed)?;
        default_name = Some(format!("shard-{i}"));
    } else if args.shard.is_some() {
        bail!("--shard only applies with --builtin");
    }
    if catalog.is_empty() {
        bail!("no data: give --data NAME=PATH.csv or --builtin NAME --shard I/N");
    }
    let name = args.name.clone().or(default_name).unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "client".into());
        format!("{host}-{}", std::process::id())
    });
    let tls = args.tls.load()?;
    shoal_client::endpoint_with(&args.coordinator, tls.as_ref())?;
    // The token comes from a file or the environment, never from a flag value that `ps` shows.
    let token = match (&args.token_file, std::env::var("SHOAL_TOKEN")) {
        (Some(path), _) => Some(shoal_client::tls::read_token_file(path, "--token-file")?),
        (None, Ok(t)) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ => None,
    };
    let attack = match &args.attack {
        Some(a) => Some(
            a.parse::<shoal_client::Attack>()
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let mut config = ClientConfig::new(args.coordinator.clone(), name, catalog);
    config.attack = attack;
    if let Some(a) = attack {
        tracing::warn!(attack = %a, "TEST ONLY: this client corrupts every update it sends");
    }
    config.give_up_after = args.give_up_after.map(Duration::from_secs);
    config.max_backoff = Duration::try_from_secs_f64(args.max_backoff_secs)
        .ok()
        .filter(|d| *d >= config.initial_backoff && *d <= Duration::from_secs(3600))
        .with_context(|| {
            format!(
                "--max-backoff-secs {}: expected 0.2 to 3600 seconds",
                args.max_backoff_secs
            )
        })?;
    if args.sessions == 0 || args.sessions > 100_000 {
        anyhow::bail!("--sessions {}: expected 1 to 100000", args.sessions);
    }
    if args.max_message_bytes < 1024 * 1024 {
        anyhow::bail!(
            "--max-message-bytes {}: expected at least 1048576 (1 MiB)",
            args.max_message_bytes
        );
    }
    config.max_message_bytes = args.max_message_bytes;
    config.max_transfer_bytes = args.max_transfer_bytes;
    config.tls = tls;
    config.token = token;
    Ok(config)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, each said once.
            let line = shoal_shared::text::one_line(e.chain().map(|c| c.to_string()));
            eprintln!("error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = build(&args)?;
    if let Some(dir) = &args.export {
        for path in config.catalog.export(dir)? {
            println!("{}", path.display());
        }
        return Ok(());
    }
    for d in config.catalog.infos() {
        tracing::info!(
            dataset = %d.name,
            train = d.train_examples,
            test = d.test_examples,
            classes = d.class_names.len(),
            "serving"
        );
    }
    if args.sessions > 1 {
        return run_sessions(config, args.sessions).await;
    }
    shoal_client::run(config, shoal_client::shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// `--sessions N`: N clients over shared connections until a signal; the first error ends the
/// process.
async fn run_sessions(config: shoal_client::ClientConfig, n: usize) -> anyhow::Result<()> {
    use shoal_client::connection::SESSIONS_PER_CONNECTION;
    let endpoint = shoal_client::endpoint_with(&config.coordinator, config.tls.as_ref())?;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shoal_client::shutdown_signal().await;
            stop.cancel();
        }
    });
    let mut sessions = tokio::task::JoinSet::new();
    let mut shared = None;
    for i in 0..n {
        if i % SESSIONS_PER_CONNECTION == 0 {
            shared = Some(endpoint.connect_lazy());
        }
        let mut c = config.clone();
        c.name = format!("{}-{i:05}", config.name);
        c.channel = shared.clone();
        sessions.spawn(shoal_client::run(c, stop.clone().cancelled_owned()));
    }
    tracing::info!(sessions = n, "sessions started");
    while let Some(ended) = sessions.join_next().await {
        if let Err(e) = ended? {
            stop.cancel();
            return Err(e.into());
        }
    }
    tracing::info!("stopped");
    Ok(())
}
