//! `job ...`: the operators' Jobs API client (submit, status, list, watch, cancel, resume) and its admin token.

use super::*;

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
    /// Give up on a call (connecting included) after this many seconds without an answer: a
    /// frozen coordinator gets an error, not a hang. `--watch` and `job watch` reconnect for as
    /// long as `--reconnect-secs` instead.
    #[arg(long, env = "SHOAL_TIMEOUT_SECS", default_value_t = 30)]
    pub timeout_secs: u64,
    /// How long `--watch` and `job watch` keep trying to reach a coordinator that went away (a
    /// restart resumes the job: the watch picks it up again).
    #[arg(long, env = "SHOAL_RECONNECT_SECS", default_value_t = 300)]
    pub reconnect_secs: u64,
}

impl Remote {
    fn limit(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs.max(1))
    }
}

/// Runs one call to the coordinator within `remote`'s time limit.
async fn within<T>(
    remote: &Remote,
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(remote.limit(), call).await {
        Ok(r) => Ok(r.map_err(rpc_error)?.into_inner()),
        Err(_) => bail!(
            "the coordinator at {} did not answer {what} within {} s (--timeout-secs)",
            remote.coordinator,
            remote.limit().as_secs()
        ),
    }
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
    /// Resume a failed or cancelled job from its last checkpoint: its recorded rounds are kept,
    /// and the round it was in runs again from the same seeds.
    Resume {
        id: String,
        /// Follow the job's rounds until it ends.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        remote: Remote,
    },
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

pub(super) async fn connect_jobs(remote: &Remote) -> anyhow::Result<AdminJobs> {
    let tls = remote.tls.load()?;
    let token = match (&remote.admin_token_file, std::env::var("SHOAL_ADMIN_TOKEN")) {
        (Some(p), _) => Some(shoal_client::tls::read_token_file(p, "--admin-token-file")?),
        (None, Ok(t)) if !t.trim().is_empty() => Some(t),
        _ => None,
    };
    let connect = connect_jobs_with(&remote.coordinator, tls.as_ref(), token.as_deref());
    match tokio::time::timeout(remote.limit(), connect).await {
        Ok(c) => c,
        Err(_) => bail!(
            "cannot reach the coordinator at {} within {} s (--timeout-secs)",
            remote.coordinator,
            remote.limit().as_secs()
        ),
    }
}

pub(super) fn status_name(s: i32) -> &'static str {
    match v1::JobStatus::try_from(s).unwrap_or(v1::JobStatus::Unspecified) {
        v1::JobStatus::Queued => "queued",
        v1::JobStatus::Running => "running",
        v1::JobStatus::Finished => "finished",
        v1::JobStatus::Failed => "failed",
        v1::JobStatus::Cancelled => "cancelled",
        v1::JobStatus::Unspecified => "unknown",
    }
}

pub(super) fn describe(j: &v1::JobInfo) -> String {
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

pub(super) fn rpc_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

pub(super) async fn job_cmd(cmd: JobCommand) -> anyhow::Result<i32> {
    match cmd {
        JobCommand::Submit {
            file,
            watch,
            remote,
        } => {
            // Parse locally first: a bad file gets an error naming it, before any network.
            let spec = read_spec(&file)?;
            // The coordinator never opens a path a remote spec names: the tensors travel along.
            let initial = super::simulate::read_init_file(&spec, &file, usize::MAX / 4)?
                .map(|w| shoal_proto::weights_to_wire(&w));
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read job file {}", file.display()))?;
            let format = if file.extension().is_some_and(|e| e == "json") {
                "json"
            } else {
                "toml"
            };
            let mut c = connect_jobs(&remote).await?;
            let request = v1::SubmitRequest {
                spec: text,
                format: format.into(),
                initial_parameters: initial,
            };
            let info = within(&remote, "the submission", c.submit(request)).await?;
            println!(
                "submitted job {} (run folder {})",
                info.job_id, info.run_dir
            );
            if watch {
                return follow_job(&remote, c, &info.job_id).await;
            }
            Ok(0)
        }
        JobCommand::Status { id, remote } => {
            let mut c = connect_jobs(&remote).await?;
            let j = within(&remote, "job status", c.get(v1::GetRequest { job_id: id })).await?;
            println!("{}", describe(&j));
            println!("run folder: {}", j.run_dir);
            Ok(0)
        }
        JobCommand::List { remote } => {
            let mut c = connect_jobs(&remote).await?;
            let list = within(&remote, "job list", c.list(v1::ListRequest {})).await?;
            if list.jobs.is_empty() {
                println!("no jobs");
            }
            for j in &list.jobs {
                println!("{}", describe(j));
            }
            Ok(0)
        }
        JobCommand::Watch { id, remote } => {
            let c = connect_jobs(&remote).await?;
            follow_job(&remote, c, &id).await
        }
        JobCommand::Cancel { id, remote } => {
            let mut c = connect_jobs(&remote).await?;
            let j = within(
                &remote,
                "the cancel",
                c.cancel(v1::CancelRequest { job_id: id }),
            )
            .await?;
            println!("cancelling {}", describe(&j));
            Ok(0)
        }
        JobCommand::Resume { id, watch, remote } => {
            let mut c = connect_jobs(&remote).await?;
            let j = within(
                &remote,
                "the resume",
                c.resume(v1::ResumeRequest { job_id: id }),
            )
            .await?;
            // `describe` names the rounds kept (`rounds 18/300`): the job goes on after them.
            println!("resuming {}", describe(&j));
            if watch {
                return follow_job(&remote, c, &j.job_id).await;
            }
            Ok(0)
        }
    }
}

/// Prints round lines until the job ends (0 when it finished), following the job across a
/// coordinator restart: when the stream breaks or ends early, it reconnects (for up to
/// `--reconnect-secs`) and goes on after the rounds it has already printed (a restarted
/// coordinator resumes the job and replays its rounds).
async fn follow_job(remote: &Remote, mut c: AdminJobs, id: &str) -> anyhow::Result<i32> {
    let mut printed = 0;
    loop {
        let why = match watch_once(&mut c, id, &mut printed).await {
            Ok(Some(code)) => return Ok(code),
            Ok(None) => "the watch ended before the job did".to_string(),
            Err(s) if transient(&s) => s.message().to_string(),
            Err(s) => return Err(rpc_error(s)),
        };
        eprintln!(
            "lost the coordinator ({}); reconnecting for up to {} s (--reconnect-secs)",
            shoal_shared::text::clip(&why, 200),
            remote.reconnect_secs
        );
        let give_up =
            tokio::time::Instant::now() + std::time::Duration::from_secs(remote.reconnect_secs);
        let mut pause = std::time::Duration::from_millis(250);
        c = loop {
            tokio::time::sleep(pause).await;
            match connect_jobs(remote).await {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() >= give_up => {
                    bail!(
                        "gave up following job {id} after {} s: {e:#}",
                        remote.reconnect_secs
                    )
                }
                Err(_) => pause = (pause * 2).min(std::time::Duration::from_secs(5)),
            }
        };
    }
}

/// A failure a coordinator restart explains: the connection broke or the server went away.
fn transient(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    )
}

/// One watch stream: prints the job's round lines after the first `printed` ones; the exit code
/// once the job ends, `None` when the stream ends before.
async fn watch_once(
    c: &mut AdminJobs,
    id: &str,
    printed: &mut usize,
) -> Result<Option<i32>, tonic::Status> {
    let mut stream = c
        .watch(v1::WatchRequest {
            job_id: id.to_string(),
        })
        .await?
        .into_inner();
    // The stream starts with the rounds stored so far, in order: skip those already shown.
    let mut seen = 0;
    while let Some(ev) = stream.message().await? {
        match ev.event {
            Some(v1::watch_event::Event::Round(r)) => {
                seen += 1;
                if seen > *printed {
                    println!("{}", round_line(&round_from_wire(&r)));
                    *printed = seen;
                }
            }
            Some(v1::watch_event::Event::Finished(j)) => {
                println!("{}", describe(&j));
                return Ok(Some(i32::from(j.status != v1::JobStatus::Finished as i32)));
            }
            None => {}
        }
    }
    Ok(None)
}
