//! The coordinator: connected clients, the state store, and the jobs it runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rand::Rng;
use shoal_proto::v1::{self, watch_event};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, Instrument};

use crate::engine::registry::Registry;
use crate::engine::round::{unix_ms, JobCtx, RoundRecord};
use crate::error::{Error, Result};
use crate::report::{print_round, LogFormat, RunFolder, Summary};
use crate::spec::JobSpec;
use crate::state::{JobRow, JobStatus, Store};

/// Settings of a coordinator process.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Where run folders go (`runs/<job-id>/`).
    pub runs_dir: PathBuf,
    /// How round lines are printed on stdout.
    pub log_format: LogFormat,
    /// Prefix round lines with the job id (useful when several jobs share one log).
    pub prefix_job_id: bool,
    /// Print round lines and summaries on stdout at all.
    pub print_rounds: bool,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// How long a new stream may take to send its `Hello`.
    pub hello_timeout: std::time::Duration,
    /// Heartbeat interval announced to clients (the coordinator beats at the same pace).
    pub heartbeat_interval: std::time::Duration,
    /// A client from which nothing arrives for this long is dropped.
    pub heartbeat_timeout: std::time::Duration,
    /// Most clients connected at once; more are refused until one leaves.
    pub max_clients: usize,
    /// Largest model (in parameters) a job may train; a tensor on the wire is never decoded
    /// beyond its job's model size.
    pub max_tensor_elements: usize,
    /// Who may connect and who may use the Jobs service.
    pub auth: crate::auth::AuthConfig,
    /// TLS for every service (and mutual TLS when it names a client CA); `None`: plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Failed authentication attempts a peer address may make per minute, each logged; past
    /// them its failures are answered ResourceExhausted, unlogged, for the rest of that minute.
    pub auth_failures_per_minute: u32,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            runs_dir: PathBuf::from("runs"),
            log_format: LogFormat::Text,
            prefix_job_id: true,
            print_rounds: true,
            max_message_bytes: 64 * 1024 * 1024,
            hello_timeout: std::time::Duration::from_secs(10),
            heartbeat_interval: std::time::Duration::from_secs(5),
            heartbeat_timeout: std::time::Duration::from_secs(60),
            max_clients: 1000,
            max_tensor_elements: 16 * 1024 * 1024,
            auth: crate::auth::AuthConfig::default(),
            tls: None,
            auth_failures_per_minute: 10,
        }
    }
}

/// Where an interrupted job goes on from.
#[derive(Debug)]
pub(crate) struct Resume {
    /// The last round completed and checkpointed (0: none).
    pub(crate) round: u32,
    pub(crate) checkpoint: Option<String>,
    /// The rounds recorded up to it.
    pub(crate) records: Vec<RoundRecord>,
}

#[derive(Debug)]
struct JobHandle {
    cancel: CancellationToken,
    events: broadcast::Sender<v1::WatchEvent>,
}

/// Shared state of a coordinator process.
#[derive(Debug)]
pub struct Coordinator {
    pub(crate) registry: Arc<Registry>,
    /// The token sets in force: `config.auth`'s at start, then whatever
    /// [`Coordinator::reload_tokens`] put in.
    pub(crate) tokens: std::sync::RwLock<crate::auth::gate::Tokens>,
    pub(crate) store: Arc<Store>,
    pub(crate) config: CoordinatorConfig,
    jobs: Mutex<HashMap<String, JobHandle>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Failed authentication attempts per peer address.
    pub(crate) failures: crate::auth::FailureBudget,
}

impl Coordinator {
    /// A coordinator over `store`. Call [`Coordinator::resume_interrupted`] once it serves, to
    /// go on with the jobs a previous process left unfinished.
    pub fn new(config: CoordinatorConfig, store: Store) -> Result<Arc<Self>> {
        config.auth.check()?;
        Ok(Arc::new(Coordinator {
            registry: Arc::new(
                Registry::new(config.max_clients).with_stale_after(config.heartbeat_interval * 3),
            ),
            store: Arc::new(store),
            jobs: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            failures: crate::auth::FailureBudget::new(config.auth_failures_per_minute),
            tokens: std::sync::RwLock::new(crate::auth::gate::Tokens {
                client: config.auth.client_tokens.clone(),
                admin: config.auth.admin_tokens.clone(),
                generation: 0,
            }),
            config,
        }))
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobHandle>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Goes on with the jobs a previous coordinator process left queued or running. Every kind
    /// resumes after its last checkpoint: train and diffusion jobs after their last round (the
    /// round the crash interrupted runs again, from the same seeds, so nothing is lost or
    /// repeated), fusion jobs at the variant and round they reached, AutoML jobs with the trials
    /// not yet finished. A job whose checkpoint cannot be restored is marked failed, saying why.
    /// Returns the ids of the resumed jobs.
    pub fn resume_interrupted(self: &Arc<Self>) -> Result<Vec<String>> {
        let mut resumed = Vec::new();
        for row in self.store.interrupted()? {
            let id = row.id.clone();
            match self.resume(row) {
                Ok(round) => {
                    tracing::warn!(job = %id, round, "resuming a job interrupted by a coordinator stop");
                    resumed.push(id);
                }
                Err(e) => {
                    tracing::warn!(job = %id, "an interrupted job cannot resume: {e}");
                    self.store.set_status(
                        &id,
                        JobStatus::Failed,
                        Some(&format!("interrupted: the coordinator stopped while the job was running, and it cannot resume: {e}")),
                    )?;
                }
            }
        }
        Ok(resumed)
    }

    /// Restarts one interrupted job from its checkpoint; returns the last completed round.
    fn resume(self: &Arc<Self>, row: JobRow) -> Result<u32> {
        let spec = JobSpec::from_toml(&row.spec_toml)?;
        let checkpoint = self.store.checkpoint(&row.id)?;
        let round = checkpoint.as_ref().map_or(0, |c| c.0);
        // Rounds recorded after the checkpoint cannot be: both go in one transaction. Older
        // stores wrote rounds without checkpoints; those rounds run again.
        self.store.truncate_rounds(&row.id, round)?;
        let records = self.store.rounds(&row.id)?;
        let run = RunFolder::reopen(std::path::Path::new(&row.run_dir), &records)?;
        let resume = Resume {
            round,
            checkpoint: checkpoint.map(|c| c.1),
            records,
        };
        self.start(row.id, spec, run, Some(resume))?;
        Ok(round)
    }

    /// Stores the job, creates its run folder and starts it.
    pub fn submit(self: &Arc<Self>, spec: JobSpec) -> Result<JobRow> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        // Paths in the spec are the coordinator's: check them now, not rounds later.
        if let Some(path) = &spec.evaluation.holdout {
            if let Err(e) = std::fs::metadata(path) {
                return Err(Error::InvalidSpec(format!(
                    "`evaluation.holdout` = \"{path}\" cannot be read on the coordinator: {e}"
                )));
            }
        }
        let id = format!(
            "{}-{:08x}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S"),
            rand::thread_rng().gen::<u32>()
        );
        let spec_toml = spec.to_toml();
        let run = RunFolder::create(&self.config.runs_dir, &id, &spec_toml)?;
        let row = JobRow {
            id: id.clone(),
            kind: spec.kind.clone(),
            status: JobStatus::Queued,
            spec_toml,
            created_ms: unix_ms(),
            rounds_total: spec.rounds,
            rounds_done: 0,
            error: None,
            run_dir: run.dir().display().to_string(),
        };
        // The handle exists before the row, so a Watch never sees a queued job without one.
        let (cancel, events) = self.handle(&id);
        if let Err(e) = self.store.insert_job(&row) {
            self.handles().remove(&id);
            return Err(e);
        }
        self.spawn_job(id.clone(), spec, cancel, events, run, None);
        info!(job = %id, "job submitted");
        Ok(row)
    }

    /// A new handle (cancel token, event channel) for job `id`.
    fn handle(&self, id: &str) -> (CancellationToken, broadcast::Sender<v1::WatchEvent>) {
        let cancel = self.shutdown.child_token();
        let (events, _) = broadcast::channel(256);
        self.handles().insert(
            id.to_string(),
            JobHandle {
                cancel: cancel.clone(),
                events: events.clone(),
            },
        );
        (cancel, events)
    }

    /// Starts a job whose row exists already (a resumed one).
    fn start(
        self: &Arc<Self>,
        id: String,
        spec: JobSpec,
        run: RunFolder,
        resume: Option<Resume>,
    ) -> Result<()> {
        let (cancel, events) = self.handle(&id);
        self.spawn_job(id, spec, cancel, events, run, resume);
        Ok(())
    }

    fn spawn_job(
        self: &Arc<Self>,
        id: String,
        spec: JobSpec,
        cancel: CancellationToken,
        events: broadcast::Sender<v1::WatchEvent>,
        run: RunFolder,
        resume: Option<Resume>,
    ) {
        let ctx = JobCtx {
            id: id.clone(),
            spec,
            registry: self.registry.clone(),
            cancel,
            max_message_bytes: self.config.max_message_bytes,
            max_tensor_elements: self.config.max_tensor_elements,
            task_seq: Default::default(),
            view: Default::default(),
            validation: false,
            strikes: Default::default(),
        };
        let me = self.clone();
        let span = tracing::info_span!("job", job = %id);
        self.tracker
            .spawn(async move { me.run_job(ctx, run, events, resume).await }.instrument(span));
    }

    async fn run_job(
        self: Arc<Self>,
        ctx: JobCtx,
        run: RunFolder,
        events: broadcast::Sender<v1::WatchEvent>,
        resume: Option<Resume>,
    ) {
        let id = ctx.id.clone();
        // A resumed job keeps its clients' refusal tallies (and so its quarantines).
        if let Some(r) = &resume {
            for rec in &r.records {
                ctx.strike(&rec.strikes());
            }
        }
        if let Err(e) = self.store.set_status(&id, JobStatus::Running, None) {
            error!("cannot record job start: {e}");
        }
        // The job body runs in its own task so that even a bug that panics ends the job as
        // failed, with its watchers told, instead of leaving it running forever.
        let body = {
            let me = self.clone();
            let ctx = ctx.clone();
            let events = events.clone();
            tokio::spawn(
                async move {
                    let mut run = run;
                    // The spec was checked at submission (and again when read back on resume),
                    // so its kind parses; a failure here would be a spec changed in between.
                    let kind = ctx
                        .spec
                        .kind
                        .parse()
                        .map_err(|e| Error::InvalidSpec(format!("`kind` {e}")))?;
                    crate::jobs::run(&me, kind, &ctx, &mut run, &events, resume).await
                }
                .in_current_span(),
            )
        };
        let outcome = match body.await {
            Ok(outcome) => outcome,
            // The job's task panicked (a bug): the job fails with the reason instead of
            // staying `running` forever.
            Err(e) => Err(Error::Job(format!(
                "internal error: the job task failed: {e}"
            ))),
        };
        // A job that resumes after a restart is left running when the coordinator stops (SIGTERM,
        // a rolling update): the next process on this state dir goes on with it.
        if outcome.is_err() && self.shutdown.is_cancelled() {
            info!(job = %id, "coordinator stopping; the job resumes when a coordinator starts on this state dir");
            self.handles().remove(&id);
            return;
        }
        let (status, message) = match &outcome {
            Ok(_) => (JobStatus::Finished, None),
            Err(_) if self.shutdown.is_cancelled() => (
                JobStatus::Failed,
                Some("interrupted: the coordinator shut down".to_string()),
            ),
            Err(Error::Cancelled) => (JobStatus::Cancelled, None),
            Err(e) => (JobStatus::Failed, Some(e.to_string())),
        };
        match &outcome {
            Ok(summary) => {
                info!(job = %id, rounds = summary.rounds, "job finished");
                if self.config.print_rounds {
                    crate::report::print_lines(&summary.lines());
                }
            }
            Err(_) => match &message {
                Some(m) => error!("job {} failed: {m}", id),
                None => info!("job {id} cancelled"),
            },
        }
        if let Err(e) = self.store.set_status(&id, status, message.as_deref()) {
            error!("cannot record job end: {e}");
        }
        if let Err(e) = self.write_report(&id, status, message.as_deref(), outcome.as_ref().ok()) {
            error!("cannot write the report: {e}");
        }
        if let Ok(info) = self.job_info(&id) {
            let _ = events.send(v1::WatchEvent {
                event: Some(watch_event::Event::Finished(info)),
            });
        }
        self.handles().remove(&id);
    }

    /// Charts and `report.html` for a job that has ended, from the stored rounds (a failed job's
    /// report shows what it got through).
    fn write_report(
        &self,
        id: &str,
        status: JobStatus,
        error: Option<&str>,
        summary: Option<&Summary>,
    ) -> Result<()> {
        let row = self.store.job(id)?;
        let rounds = self.store.rounds(id)?;
        crate::report::html::write_report(
            std::path::Path::new(&row.run_dir),
            &crate::report::html::Outcome {
                job_id: id,
                status: status.as_str(),
                error,
            },
            &row.spec_toml,
            &rounds,
            summary,
        )
    }

    /// Records one round with the job's checkpoint after it, in one transaction, then the run
    /// folder, stdout and watchers. The round line is printed only when `print_line` (AutoML
    /// prints its own per-trial lines).
    pub(crate) fn record(
        &self,
        ctx: &JobCtx,
        run: &mut RunFolder,
        events: &broadcast::Sender<v1::WatchEvent>,
        rec: &RoundRecord,
        checkpoint: &str,
        print_line: bool,
    ) -> Result<()> {
        self.store
            .record_round_with(&ctx.id, rec, Some(checkpoint))?;
        self.announce(ctx, run, events, rec, print_line)
    }

    /// A recorded round's run-folder line, round line and watch event.
    fn announce(
        &self,
        ctx: &JobCtx,
        run: &mut RunFolder,
        events: &broadcast::Sender<v1::WatchEvent>,
        rec: &RoundRecord,
        print_line: bool,
    ) -> Result<()> {
        run.append(rec)?;
        let job = self.config.prefix_job_id.then_some(ctx.id.as_str());
        if self.config.print_rounds && (print_line || self.config.log_format == LogFormat::Json) {
            print_round(self.config.log_format, job, rec);
        }
        let _ = events.send(v1::WatchEvent {
            event: Some(watch_event::Event::Round(round_to_wire(&ctx.id, rec))),
        });
        Ok(())
    }

    /// Prints lines on stdout when round lines are printed as text (not JSON).
    pub(crate) fn print_text(&self, lines: &[String]) {
        if self.config.print_rounds && self.config.log_format == LogFormat::Text {
            crate::report::print_lines(lines);
        }
    }

    /// The job's status as the API shows it.
    pub fn job_info(&self, id: &str) -> Result<v1::JobInfo> {
        let row = self.store.job(id)?;
        let last = self.store.rounds(id)?.pop();
        Ok(job_to_wire(&row, last.as_ref()))
    }

    /// How many jobs the state holds, whatever their status.
    pub fn job_count(&self) -> Result<usize> {
        Ok(self.store.jobs()?.len())
    }

    pub fn list(&self) -> Result<Vec<v1::JobInfo>> {
        self.store
            .jobs()?
            .iter()
            // One job's unreadable rounds must not hide every other job.
            .map(|row| {
                let last = self.store.rounds(&row.id).ok().and_then(|mut r| r.pop());
                Ok(job_to_wire(row, last.as_ref()))
            })
            .collect()
    }

    /// Asks a running job to stop; it ends as `cancelled` at its next await point.
    pub fn cancel(&self, id: &str) -> Result<v1::JobInfo> {
        let row = self.store.job(id)?;
        if row.status.is_terminal() {
            return Err(Error::JobEnded(id.to_string()));
        }
        if let Some(h) = self.handles().get(id) {
            h.cancel.cancel();
        }
        self.job_info(id)
    }

    /// Round history of a job plus a receiver for what comes next (`None` when it has ended).
    #[allow(clippy::type_complexity)]
    pub fn watch(
        &self,
        id: &str,
    ) -> Result<(
        Vec<v1::WatchEvent>,
        Option<broadcast::Receiver<v1::WatchEvent>>,
    )> {
        // Subscribe before reading history, so nothing falls between the two.
        let rx = self.handles().get(id).map(|h| h.events.subscribe());
        let row = self.store.job(id)?;
        let mut history: Vec<v1::WatchEvent> = self
            .store
            .rounds(id)?
            .iter()
            .map(|r| v1::WatchEvent {
                event: Some(watch_event::Event::Round(round_to_wire(id, r))),
            })
            .collect();
        if row.status.is_terminal() || rx.is_none() {
            history.push(v1::WatchEvent {
                event: Some(watch_event::Event::Finished(self.job_info(id)?)),
            });
            return Ok((history, None));
        }
        Ok((history, rx))
    }

    /// Stops everything: jobs end, client streams close, new clients are refused.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.registry.close();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

pub(crate) fn status_to_wire(s: JobStatus) -> v1::JobStatus {
    match s {
        JobStatus::Queued => v1::JobStatus::Queued,
        JobStatus::Running => v1::JobStatus::Running,
        JobStatus::Finished => v1::JobStatus::Finished,
        JobStatus::Failed => v1::JobStatus::Failed,
        JobStatus::Cancelled => v1::JobStatus::Cancelled,
    }
}

fn job_to_wire(row: &JobRow, last: Option<&RoundRecord>) -> v1::JobInfo {
    v1::JobInfo {
        job_id: row.id.clone(),
        kind: row.kind.clone(),
        status: status_to_wire(row.status) as i32,
        rounds_total: row.rounds_total,
        rounds_done: row.rounds_done,
        error: row.error.clone().unwrap_or_default(),
        spec: row.spec_toml.clone(),
        created_unix_ms: row.created_ms,
        last_round: last.map(|r| round_to_wire(&row.id, r)),
        run_dir: row.run_dir.clone(),
    }
}

pub(crate) fn round_to_wire(job: &str, r: &RoundRecord) -> v1::RoundReport {
    v1::RoundReport {
        job_id: job.to_string(),
        round: r.round,
        rounds_total: r.rounds_total,
        clients: r.clients,
        clients_selected: r.clients_selected,
        train_loss: r.train_loss,
        fed_loss: r.fed_loss,
        fed_accuracy: r.fed_accuracy,
        test_accuracy: r.test_accuracy,
        test_loss: r.test_loss,
        bytes_up: r.bytes_up,
        bytes_down: r.bytes_down,
        seconds: r.seconds,
        rejected: r.rejected,
        rejected_by: r.rejected_by.clone().into_iter().collect(),
        late_by: r.late_by.clone().into_iter().collect(),
        quarantined: r.quarantined.clone(),
    }
}

/// The inverse of `round_to_wire`, for clients of the Jobs API that print round lines.
pub fn round_from_wire(r: &v1::RoundReport) -> RoundRecord {
    RoundRecord {
        round: r.round,
        rounds_total: r.rounds_total,
        clients: r.clients,
        clients_selected: r.clients_selected,
        train_loss: r.train_loss,
        fed_loss: r.fed_loss,
        fed_accuracy: r.fed_accuracy,
        test_accuracy: r.test_accuracy,
        test_loss: r.test_loss,
        bytes_up: r.bytes_up,
        bytes_down: r.bytes_down,
        seconds: r.seconds,
        rejected: r.rejected,
        rejected_by: r.rejected_by.clone().into_iter().collect(),
        late_by: r.late_by.clone().into_iter().collect(),
        quarantined: r.quarantined.clone(),
    }
}
