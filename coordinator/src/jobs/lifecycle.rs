//! A job's life on the coordinator: submitted (or found unfinished after a restart), run in its
//! own task by its kind, every round recorded with its checkpoint, its report written, and the
//! Jobs API's view of it (info, list, watch, cancel).

use std::sync::Arc;

use rand::Rng;
use shoal_proto::v1::{self, watch_event};
use shoal_shared::text::{clip, ID_CHARS};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use crate::coordinator::{job_to_wire, round_to_wire, Coordinator, JobHandle, Resume};
use crate::engine::round::{unix_ms, JobCtx, RoundRecord};
use crate::error::{Error, Result};
use crate::report::{print_round, LogFormat, RunFolder, Summary};
use crate::spec::CheckedSpec;
use crate::state::{JobRow, JobStatus};

/// How often a write the state store refused for lack of space or an I/O error is tried again.
const STORE_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// An end-of-job step that takes longer than this says what it is doing (and, when done, how
/// long it took); quicker ones stay silent.
const SLOW_STEP: std::time::Duration = std::time::Duration::from_secs(2);

impl Coordinator {
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
        let id = row.id.clone();
        let (cancel, events) = self.handle(&id);
        self.resume_with(row, cancel, events).inspect_err(|_| {
            self.handles().remove(&id);
        })
    }

    /// [`Self::resume`] with the job's handle made already (a `Resume` request makes it before
    /// the job leaves its failed state, so a cancel or a watch never finds it live without one).
    fn resume_with(
        self: &Arc<Self>,
        row: JobRow,
        cancel: CancellationToken,
        events: broadcast::Sender<v1::WatchEvent>,
    ) -> Result<u32> {
        let spec = CheckedSpec::from_toml(&row.spec_toml)?;
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
        self.spawn_job(
            row.id,
            row.created_ms,
            spec,
            cancel,
            events,
            run,
            Some(resume),
        );
        Ok(round)
    }

    /// Stores the job, creates its run folder and starts it.
    pub fn submit(self: &Arc<Self>, spec: CheckedSpec) -> Result<JobRow> {
        self.submit_with_initial(spec, None)
    }

    /// [`Self::submit`] with the tensors of an external model's `init_file`, which the submitting
    /// tool read: they name the model's tensors (or must match those the spec lists) and are
    /// kept in the state store beside the job, so a resumed job starts from them too.
    pub fn submit_with_initial(
        self: &Arc<Self>,
        spec: CheckedSpec,
        initial: Option<shoal_shared::tensor::Weights>,
    ) -> Result<JobRow> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let from_file = spec
            .model
            .external()
            .filter(|e| e.init == shoal_shared::models::external::ExternalInit::File);
        let (spec, initial) = match (from_file, initial) {
            (Some(ext), Some(w)) => {
                let (ext, w) = ext
                    .adopt(w)
                    .map_err(|e| Error::InvalidSpec(format!("model.init_file: {e}")))?;
                let mut written = spec.into_spec();
                written.model = shoal_shared::models::ModelSpec::External(ext);
                (written.check()?, Some(w))
            }
            (Some(_), None) => {
                return Err(Error::InvalidSpec(
                    "model.init = \"file\": the submission carries no initial parameters; submit with `shoal-coordinator job submit` or `serve --job`, which read init_file and send its tensors".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::InvalidSpec(
                    "initial parameters were sent with a job whose model.init is not \"file\"".into(),
                ))
            }
            (None, None) => (spec, None),
        };
        // Paths in the spec are the coordinator's, under its data dir: check them now, not
        // rounds later.
        if let Some(path) = &spec.evaluation.holdout {
            crate::spec::resolve_data_file(
                self.config.data_dir.as_deref(),
                "evaluation.holdout",
                path,
            )?;
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
            kind: spec.kind().to_string(),
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
        let stored = match &initial {
            Some(w) => self
                .store
                .insert_job_with_initial(&row, &crate::engine::initial::encode(w)),
            None => self.store.insert_job(&row),
        };
        if let Err(e) = stored {
            self.handles().remove(&id);
            return Err(e);
        }
        self.spawn_job(id.clone(), row.created_ms, spec, cancel, events, run, None);
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

    #[allow(clippy::too_many_arguments)]
    fn spawn_job(
        self: &Arc<Self>,
        id: String,
        created_ms: u64,
        spec: CheckedSpec,
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
            max_transfer_bytes: self.config.max_transfer_bytes,
            max_tensor_elements: self.config.max_tensor_elements,
            task_seq: Default::default(),
            view: Default::default(),
            validation: false,
            strikes: Default::default(),
            initial: None,
            data_dir: self.config.data_dir.clone().map(Arc::from),
            told: Default::default(),
            silence: Default::default(),
            created_ms,
            spool_dir: Some(Arc::from(self.config.runs_dir.as_path())),
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
                ctx.quarantine(&rec.silenced);
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
                    let out = crate::jobs::run(&me, &ctx, &mut run, &events, resume).await;
                    if run.stale {
                        match me.store.rounds(&ctx.id).and_then(|all| run.rewrite(&all)) {
                            Ok(()) => info!(job = %ctx.id, "run folder rewritten from the state store"),
                            Err(e) => error!(job = %ctx.id, "the run folder still cannot be written ({e}); every round is in the state store"),
                        }
                    }
                    out
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
        // The end is recorded before watchers hear of it, waiting out a full disk: a job the
        // store still calls running would otherwise stay so forever.
        let what = format!("job {id}: recording its end");
        if let Err(e) = self
            .until_stored(None, &what, || {
                self.store.set_status(&id, status, message.as_deref())
            })
            .await
        {
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
    pub(crate) async fn record(
        &self,
        ctx: &JobCtx,
        run: &mut RunFolder,
        events: &broadcast::Sender<v1::WatchEvent>,
        rec: &RoundRecord,
        checkpoint: &[u8],
        print_line: bool,
    ) -> Result<()> {
        self.until_stored(
            Some(&ctx.cancel),
            &format!("job {}: recording round {}", ctx.id, rec.round),
            || self.store.record_round_with(&ctx.id, rec, Some(checkpoint)),
        )
        .await?;
        self.announce(ctx, run, events, rec, print_line)
    }

    /// One step of a job's end-of-job phase (after its last round), named `name` in the state
    /// store. Its result is kept there, so a coordinator restart in this phase reuses it instead
    /// of working it out again (a centralized baseline takes seconds to minutes). A step still
    /// running after [`SLOW_STEP`] prints what it does, `what`, and then how long it took. Only
    /// a result `complete` calls so is kept: one a passing failure left short (a baseline that
    /// failed, a table without clients) is worked out again next time.
    pub(crate) async fn end_step<T>(
        &self,
        ctx: &JobCtx,
        name: &str,
        what: &str,
        work: impl std::future::Future<Output = Result<T>>,
        complete: impl Fn(&T) -> bool,
    ) -> Result<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let saved = self.store.end_result(&ctx.id, name)?;
        if let Some(v) = saved.and_then(|s| serde_json::from_str(&s).ok()) {
            info!(
                step = name,
                "end-of-job step done before the restart; its result is reused"
            );
            return Ok(v);
        }
        info!(step = name, "{what}");
        let started = std::time::Instant::now();
        tokio::pin!(work);
        let value = tokio::select! {
            v = &mut work => v?,
            _ = tokio::time::sleep(SLOW_STEP) => {
                self.print_text(&[format!("[{}] after the last round: {what} ...", ctx.id)]);
                let v = work.await?;
                self.print_text(&[format!(
                    "[{}] {what}: done in {:.1} s",
                    ctx.id,
                    started.elapsed().as_secs_f64()
                )]);
                v
            }
        };
        if !complete(&value) {
            return Ok(value);
        }
        let text = serde_json::to_string(&value)
            .map_err(|e| Error::Job(format!("cannot keep the result of {what}: {e}")))?;
        self.until_stored(
            Some(&ctx.cancel),
            &format!("job {}: keeping the result of {what}", ctx.id),
            || self.store.save_end_result(&ctx.id, name, &text),
        )
        .await?;
        Ok(value)
    }

    /// Runs a state-store write until it succeeds. A full disk or an I/O error is an outage of
    /// the storage, not a verdict on the job: it is logged once and the write tried again every
    /// [`STORE_RETRY`] until it goes through, the job is cancelled (`cancel`), or the coordinator
    /// stops (the job, still `running` in the store, then resumes at the next start). Other
    /// errors are returned at once.
    pub(crate) async fn until_stored<T>(
        &self,
        cancel: Option<&tokio_util::sync::CancellationToken>,
        what: &str,
        mut write: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        let mut warned = false;
        loop {
            match write() {
                Ok(v) => {
                    if warned {
                        info!("{what}: the state store takes writes again");
                    }
                    return Ok(v);
                }
                Err(e) if crate::state::is_outage(&e) => {
                    if !warned {
                        warn!("{what}: {e}; waiting for the state store (trying again every {} s; free space and it goes on)", STORE_RETRY.as_secs());
                        warned = true;
                    }
                    let cancelled = async {
                        match cancel {
                            Some(c) => c.cancelled().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(STORE_RETRY) => {}
                        _ = cancelled => return Err(Error::Cancelled),
                        _ = self.shutdown.cancelled() => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
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
        // The store holds the round already: a run folder that cannot be written (a full disk)
        // is reported and rewritten from the store later, never the end of the job.
        let was_stale = run.stale;
        match run.add(rec, || self.store.rounds(&ctx.id)) {
            Ok(()) if was_stale => {
                info!(job = %ctx.id, "run folder rewritten from the state store")
            }
            Ok(()) => {}
            Err(e) if !was_stale => {
                warn!(job = %ctx.id, round = rec.round, "{e}; the round is kept in the state store, and the run folder is rewritten from it once it can be written")
            }
            Err(_) => {}
        }
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

    /// Goes on with a failed or cancelled job from its last checkpoint, as a restart goes on with
    /// an interrupted one: a job that failed for a cause since removed (its clients all gone for
    /// longer than the wait, a full disk) loses none of its recorded rounds. Refused for a job
    /// that finished or still runs (or is still recording its end).
    pub fn resume_job(self: &Arc<Self>, id: &str) -> Result<v1::JobInfo> {
        // One resume at a time: two concurrent ones must not both start the job.
        let _one = self.resuming.lock().unwrap_or_else(|p| p.into_inner());
        let row = self.store.job(id)?;
        let id = row.id.clone();
        match row.status {
            JobStatus::Failed | JobStatus::Cancelled => {}
            JobStatus::Finished => {
                return Err(Error::JobState(format!(
                    "job `{}` finished; there is nothing to resume (submit it again for a new run)",
                    clip(&id, ID_CHARS)
                )))
            }
            JobStatus::Queued | JobStatus::Running => {
                return Err(Error::JobState(format!(
                    "job `{}` is still {}; only a failed or cancelled job can be resumed",
                    clip(&id, ID_CHARS),
                    row.status.as_str()
                )))
            }
        }
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if self.handles().contains_key(&id) {
            return Err(Error::JobState(format!(
                "job `{}` is still recording its end; try again in a moment",
                clip(&id, ID_CHARS)
            )));
        }
        let (cancel, events) = self.handle(&id);
        if let Err(e) = self.store.set_status(&id, JobStatus::Queued, None) {
            self.handles().remove(&id);
            return Err(e);
        }
        let round = match self.resume_with(row, cancel, events) {
            Ok(round) => round,
            Err(e) => {
                self.handles().remove(&id);
                let why = format!("cannot resume: {e}");
                self.store.set_status(&id, JobStatus::Failed, Some(&why))?;
                return Err(Error::JobState(format!(
                    "job `{}` {why}",
                    clip(&id, ID_CHARS)
                )));
            }
        };
        info!(job = %id, round, "job resumed on request");
        self.job_info(&id)
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
}
