//! `serve`: the federation server, its settings from flags, token reload on SIGHUP, `--exit-when-done`.

use super::*;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Loopback by default: pass e.g. 0.0.0.0:50051 to accept clients
    /// from other machines.
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Folder that files named in jobs (`[evaluation] holdout`) resolve under, as relative paths.
    /// Without it, jobs may name no files on this host.
    #[arg(long, env = "SHOAL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
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
    /// Most bytes of dataset descriptions (dataset, feature and class names) the connected
    /// clients' Hellos may hold together; a Hello past it is refused.
    #[arg(long, env = "SHOAL_MAX_ANNOUNCED_BYTES", default_value_t = crate::coordinator::DEFAULT_MAX_ANNOUNCED_BYTES)]
    pub max_announced_bytes: usize,
    /// Largest gRPC message received or sent, in bytes.
    #[arg(long, env = "SHOAL_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Largest task or result that travels in chunks, in bytes: a model over the message limit
    /// is cut into 1 MiB chunks, up to this size.
    #[arg(long, env = "SHOAL_MAX_TRANSFER_BYTES", default_value_t = crate::coordinator::DEFAULT_MAX_TRANSFER_BYTES)]
    pub max_transfer_bytes: u64,
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

/// Resolves once the coordinator has had a job and none is queued or running any more; returns
/// whether every job finished.
pub(super) async fn all_jobs_done(coord: std::sync::Arc<Coordinator>) -> bool {
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
pub(super) fn serve_config(a: &ServeArgs) -> anyhow::Result<CoordinatorConfig> {
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
        max_transfer_bytes: a.max_transfer_bytes,
        max_tensor_elements: a.max_tensor_elements,
        max_clients: a.max_clients,
        max_announced_bytes: a.max_announced_bytes,
        hello_timeout: secs(a.hello_timeout_secs, "--hello-timeout-secs")?,
        heartbeat_timeout: secs(a.heartbeat_timeout_secs, "--heartbeat-timeout-secs")?,
        auth,
        tls,
        auth_failures_per_minute: a.auth_failures_per_minute,
        data_dir: match &a.data_dir {
            Some(d) if !d.is_dir() => {
                anyhow::bail!("--data-dir {}: not a directory", d.display())
            }
            d => d.clone(),
        },
        ..CoordinatorConfig::default()
    })
}

pub(super) async fn serve_cmd(a: ServeArgs) -> anyhow::Result<i32> {
    let initial = match &a.job {
        Some(path) => {
            let spec = read_spec(path)?;
            let params = super::simulate::read_init_file(&spec, path, a.max_tensor_elements)?;
            Some((spec, params))
        }
        None => None,
    };
    let config = serve_config(&a)?;
    let store = Store::open(&a.state_dir)?;
    let coord = Coordinator::new(config, store)?;
    let listener = TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    tracing::info!(addr = %listener.local_addr()?, state = %a.state_dir.display(), "coordinator listening");
    if listener.local_addr()?.ip().is_loopback() {
        tracing::info!(
            "listening on loopback only: clients on other machines cannot connect (pass --listen 0.0.0.0:50051 to accept them)"
        );
    }
    #[cfg(unix)]
    reload_tokens_on_hangup(&coord, a.client_tokens.clone(), a.admin_tokens.clone())?;
    // A restart on the same state dir goes on with the jobs the last process left running,
    // and does not submit --job a second time.
    let fresh = coord.job_count()? == 0;
    for id in coord.resume_interrupted()? {
        println!("resumed job {id}");
    }
    if let Some((spec, params)) = initial {
        if fresh {
            let row = coord.submit_with_initial(spec, params)?;
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
pub(super) fn reload_tokens_on_hangup(
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
pub(super) fn reload_tokens(
    coord: &Coordinator,
    client: Option<&Path>,
    admin: Option<&Path>,
) -> crate::error::Result<Vec<String>> {
    use crate::auth::TokenSet;
    let client = client.map(TokenSet::load).transpose()?;
    let admin = admin.map(TokenSet::load).transpose()?;
    coord.reload_tokens(client, admin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// S9 #6: an open coordinator listens on loopback unless told otherwise, and names no data
    /// folder unless given one.
    #[test]
    fn serve_listens_on_loopback_by_default() {
        // The environment could set either: these defaults are the flags' own.
        if std::env::var_os("SHOAL_LISTEN").is_some()
            || std::env::var_os("SHOAL_DATA_DIR").is_some()
        {
            return;
        }
        let Command::Serve(a) = Cli::parse_from(["shoal-coordinator", "serve"]).command else {
            panic!("not serve");
        };
        let addr: std::net::SocketAddr = a.listen.parse().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
        assert!(a.data_dir.is_none());
    }
}
