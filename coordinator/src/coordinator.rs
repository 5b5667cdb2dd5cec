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

use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::report::{print_round, LogFormat, RunFolder, Summary};
use crate::round::{unix_ms, JobCtx, RoundRecord};
use crate::spec::JobSpec;
use crate::store::{JobRow, JobStatus, Store};

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
    pub auth: crate::security::AuthConfig,
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
            auth: crate::security::AuthConfig::default(),
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
    tokens: std::sync::RwLock<Tokens>,
    pub(crate) store: Arc<Store>,
    pub(crate) config: CoordinatorConfig,
    jobs: Mutex<HashMap<String, JobHandle>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Failed authentication attempts per peer address.
    pub(crate) failures: crate::security::FailureBudget,
}

/// Client and admin token sets.
#[derive(Debug)]
struct Tokens {
    client: Option<crate::security::TokenSet>,
    admin: Option<crate::security::TokenSet>,
    /// Bumped by every reload, so a Hello checked against older sets is checked again.
    generation: u64,
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
            failures: crate::security::FailureBudget::new(config.auth_failures_per_minute),
            tokens: std::sync::RwLock::new(Tokens {
                client: config.auth.client_tokens.clone(),
                admin: config.auth.admin_tokens.clone(),
                generation: 0,
            }),
            config,
        }))
    }

    /// Checks a client's credentials: its token against the client token file (bound to its
    /// name), and with mutual TLS its certificate's name against the name it gave. The error is
    /// the reason it is refused; `Ok` holds the generation of the token sets it was checked
    /// against (see [`Coordinator::tokens_reloaded_since`]).
    pub(crate) fn authenticate_client(
        &self,
        hello: &v1::Hello,
        cert_name: Option<&str>,
    ) -> std::result::Result<u64, String> {
        let auth = &self.config.auth;
        let name = hello.client_name.trim();
        if auth.client_certs {
            match cert_name {
                None => return Err("no client certificate (mutual TLS is required)".into()),
                Some(c) if c != name => {
                    return Err(format!("the client certificate is `{c}`'s, not `{name}`'s"))
                }
                Some(_) => {}
            }
        }
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = &tokens.client {
            if hello.token.trim().is_empty() {
                return Err("no token (pass --token-file)".into());
            }
            if !client.verify(name, &hello.token) {
                return Err(format!("the token is not `{name}`'s"));
            }
        }
        Ok(tokens.generation)
    }

    /// Whether the token sets were reloaded after generation `checked`: a Hello checked before
    /// a reload and registered after it must be checked again, or a revoked token could slip in
    /// between the reload's check of connected clients and its registration.
    pub(crate) fn tokens_reloaded_since(&self, checked: u64) -> bool {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .generation
            != checked
    }

    /// Puts new client and admin token sets in force (what `serve` does on SIGHUP, after reading
    /// both token files again). Token checks cannot be turned on or off this way. Clients whose
    /// token was changed or removed are disconnected, so a revoked token serves no longer; their
    /// next Hello needs the new one. Returns their names.
    pub fn reload_tokens(
        &self,
        client: Option<crate::security::TokenSet>,
        admin: Option<crate::security::TokenSet>,
    ) -> Result<Vec<String>> {
        let revoked = {
            let mut t = self.tokens.write().unwrap_or_else(|p| p.into_inner());
            if t.client.is_some() != client.is_some() || t.admin.is_some() != admin.is_some() {
                return Err(Error::Config(
                    "a reload cannot turn token checks on or off: restart the coordinator with or without --client-tokens / --admin-tokens".into(),
                ));
            }
            let revoked = match (&t.client, &client) {
                (Some(old), Some(new)) => old.revoked_in(new),
                _ => Vec::new(),
            };
            *t = Tokens {
                client,
                admin,
                generation: t.generation + 1,
            };
            revoked
        };
        Ok(revoked
            .into_iter()
            .filter(|name| self.registry.drop_client(name))
            .inspect(|name| info!(client = %name, "token revoked: client disconnected"))
            .collect())
    }

    /// Lets a Jobs call through when it carries an admin token (`authorization: Bearer TOKEN`),
    /// or when no admin tokens are configured (a development coordinator).
    pub(crate) fn authorize_admin<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> std::result::Result<(), tonic::Status> {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let Some(admins) = &tokens.admin else {
            return Ok(());
        };
        let peer = request.remote_addr();
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let reason = match token {
            None => "no admin token (pass --admin-token-file or set SHOAL_ADMIN_TOKEN)",
            Some(t) if admins.find(t).is_some() => return Ok(()),
            Some(_) => "the token is not an admin token",
        };
        self.auth_failed(peer, "Jobs", reason)?;
        Err(
            Error::Unauthenticated(format!("the Jobs service needs an admin token: {reason}"))
                .into(),
        )
    }

    /// Records a failed attempt. Within the peer address's budget it is logged with the address
    /// and the caller gives its own answer (`Ok`); past the budget it is not logged and the
    /// answer is `ResourceExhausted`, for the rest of the window. Valid credentials are always
    /// checked first and let in: a flood from an address (a shared NAT, say) must not lock out
    /// the honest clients behind it, and 256-bit tokens are not guessed, so what the budget
    /// bounds is the noise and work failures cause.
    pub(crate) fn auth_failed(
        &self,
        peer: Option<std::net::SocketAddr>,
        service: &str,
        reason: &str,
    ) -> std::result::Result<(), tonic::Status> {
        use crate::security::Failure;
        let peer_text = peer.map_or_else(|| "unknown peer".into(), |p| p.to_string());
        match self.failures.fail(peer.map(|a| a.ip())) {
            Failure::Logged => {
                tracing::warn!(peer = %peer_text, service, "refused: {reason}");
                Ok(())
            }
            Failure::Exhausted => {
                tracing::warn!(
                    peer = %peer_text,
                    service,
                    "refused: {reason}; this address has used its failed-attempt budget: its next failures are answered ResourceExhausted, unlogged, for {} s",
                    crate::security::FAILURE_WINDOW.as_secs()
                );
                Ok(())
            }
            Failure::Quiet => Err(Error::Exhausted(format!(
                "too many failed attempts from {}; try again within {} s",
                peer.map_or_else(|| "this address".into(), |p| p.ip().to_string()),
                crate::security::FAILURE_WINDOW.as_secs()
            ))
            .into()),
        }
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
                    if ctx.spec.kind == "fusion" {
                        me.fusion(&ctx, &mut run, &events, resume).await
                    } else if ctx.spec.kind == "diffusion" {
                        me.diffusion(&ctx, &mut run, &events, resume).await
                    } else if ctx.spec.kind == "automl" {
                        me.automl(&ctx, &mut run, &events, resume).await
                    } else {
                        me.train(&ctx, &mut run, &events, resume).await
                    }
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
        crate::html::write_report(
            std::path::Path::new(&row.run_dir),
            &crate::html::Outcome {
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

    /// A fusion job: one federated training per variant (each modality alone, early and cross
    /// fusion), late fusion from the single-modality models, and learned late fusion (a model over
    /// their outputs, trained over the federation). Rounds are numbered across the variants.
    /// After every round a [`FusionCheckpoint`] goes in with the round, so a restarted
    /// coordinator goes on from the variant and round it reached.
    async fn fusion(
        &self,
        ctx: &JobCtx,
        run: &mut RunFolder,
        events: &broadcast::Sender<v1::WatchEvent>,
        resume: Option<Resume>,
    ) -> Result<Summary> {
        use crate::report::VariantResult;
        use shoal_shared::fusion::{self, FeatureView};
        use shoal_shared::models::Server;

        let clients = ctx.wait_available(1, None).await?;
        let facts = ctx.resolve_data(&clients).await?;
        let holdout = facts.holdout.clone().ok_or_else(|| {
            Error::Job("a fusion job needs a test set: a built-in dataset such as multimodal, or [evaluation] holdout".into())
        })?;
        // Views select columns by position: every client must hold the test set's columns in
        // the same order.
        for c in &clients {
            let names = c.dataset(&ctx.spec.dataset).map(|d| &d.feature_names);
            if names != Some(&holdout.feature_names) {
                return Err(Error::Job(format!(
                    "client `{}` holds `{}` with other feature names (or another order) than the test set; fusion views select columns by position",
                    c.name, ctx.spec.dataset
                )));
            }
        }
        // Modalities come from the coordinator's own test set, never from what a client announced.
        let mods = fusion::modalities(&holdout.feature_names);
        if mods.len() > fusion::MAX_MODALITIES {
            return Err(Error::Job(format!(
                "fusion compares at most {} modalities; `{}` has {}",
                fusion::MAX_MODALITIES,
                ctx.spec.dataset,
                mods.len()
            )));
        }
        if mods.len() < 2 {
            return Err(Error::Job(format!(
                "fusion needs features from at least 2 modalities (name prefixes such as m1_, m2_); `{}` has {}",
                ctx.spec.dataset,
                mods.len()
            )));
        }
        let variants = fusion::variants(&mods);
        let per = ctx.spec.rounds;
        let total = per
            .checked_mul(variants.len() as u32 + 1)
            .ok_or_else(|| Error::InvalidSpec("rounds times fusion variants overflows".into()))?;
        self.store.set_rounds_total(&ctx.id, total)?;
        // Where to start: the beginning, or the checkpoint's variant and round.
        let mut at = FusionCheckpoint::default();
        let mut records: Vec<RoundRecord> = Vec::new();
        if let Some(r) = resume {
            if let Some(c) = &r.checkpoint {
                at = serde_json::from_str(c).map_err(|e| {
                    Error::Job(format!("the fusion checkpoint cannot be read: {e}"))
                })?;
            }
            records = r.records;
            self.print_text(&[format!(
                "[{}] resuming after round {} of {total}",
                ctx.id, r.round
            )]);
        }
        let plan: Vec<(String, Option<FeatureView>, Option<usize>)> = variants
            .iter()
            .map(|v| (v.name.clone(), Some(v.view.clone()), v.modality))
            .chain(std::iter::once((
                "learned late fusion".to_string(),
                None,
                None,
            )))
            .collect();
        for (index, (name, view, modality)) in plan.into_iter().enumerate().skip(at.variant) {
            // Learned late fusion stacks the single-modality models trained just before.
            let view = view.unwrap_or_else(|| FeatureView::Stacked {
                members: at.members.clone(),
            });
            let (vctx, vfacts) = ctx.with_view(&facts, &view)?;
            let features = vfacts.n_features;
            let mut state = vctx.init_state(vfacts)?;
            let first = if index == at.variant {
                if let Some(c) = &at.state {
                    state.global.restore(c)?;
                }
                at.round + 1
            } else {
                1
            };
            let offset = index as u32 * per;
            if first == 1 {
                info!(variant = %name, features, "fusion variant started");
                self.print_text(&[format!("fusion variant: {name} ({features} features)")]);
            }
            for round in first..=per {
                let mut rec = vctx.run_round(round, &mut state).await?;
                rec.round = offset + round;
                rec.rounds_total = total;
                if round == per {
                    // The variant is done: its result (and, for a single modality, its model
                    // as a stacking member) goes into the same checkpoint as its last round.
                    at.results.push(VariantResult {
                        variant: name.clone(),
                        features,
                        test_accuracy: rec.test_accuracy.unwrap_or(f64::NAN),
                        rounds: per,
                    });
                    if let (Some(m), Server::Sgd(s)) = (modality, &state.global) {
                        s.weights.check_finite()?;
                        at.members.push(fusion::StackMember {
                            columns: mods[m].1.clone(),
                            weights: s.weights.clone(),
                        });
                    }
                    if at.members.len() == mods.len()
                        && !at.results.iter().any(|r| r.variant == "late fusion")
                    {
                        at.results.push(late_fusion_result(
                            &at.members,
                            &holdout,
                            facts.n_features,
                        )?);
                    }
                    at.variant = index + 1;
                    at.round = 0;
                    at.state = None;
                } else {
                    at.variant = index;
                    at.round = round;
                    at.state = Some(state.global.checkpoint()?);
                }
                let checkpoint = serde_json::to_string(&at)
                    .map_err(|e| Error::Job(format!("cannot write the fusion checkpoint: {e}")))?;
                self.record(ctx, run, events, &rec, &checkpoint, true)?;
                records.push(rec);
            }
        }
        let mut summary = Summary::from_rounds(&ctx.id, &ctx.spec, &records);
        summary.variants = at.results;
        write_fusion_outputs(run, &summary.variants)?;
        run.write_json("summary.json", &summary)?;
        Ok(summary)
    }

    /// A train job from first round (or the round after its checkpoint) to summary.
    async fn train(
        &self,
        ctx: &JobCtx,
        run: &mut RunFolder,
        events: &broadcast::Sender<v1::WatchEvent>,
        resume: Option<Resume>,
    ) -> Result<Summary> {
        let clients = ctx.wait_available(1, None).await?;
        let facts = ctx.resolve_data(&clients).await?;
        let mut state = ctx.init_state(facts)?;
        info!(
            dataset = %ctx.spec.dataset,
            features = state.facts.n_features,
            classes = state.facts.class_names.len(),
            size = state.global.size(),
            "job started"
        );
        let records = self
            .checkpointed_rounds(ctx, run, events, &mut state, resume)
            .await?;
        let table = ctx.client_table(&state).await?;
        let mut summary = Summary::from_rounds(&ctx.id, &ctx.spec, &records);
        summary.clients = table;
        if let (Some(b), true) = (
            state.facts.builtin,
            ctx.spec.evaluation.centralized_baseline,
        ) {
            summary.centralized_test_accuracy = centralized_baseline(ctx, b, &state).await;
        }
        run.write_json(
            "model.json",
            &serde_json::json!({
                "model": ctx.spec.model,
                "feature_names": state.facts.feature_names,
                "class_names": state.facts.class_names,
                "global": state.global.to_json(),
            }),
        )?;
        run.write_json("summary.json", &summary)?;
        run.write_client_table(&summary.clients)?;
        Ok(summary)
    }

    /// The rounds of a job that checkpoints (train, diffusion): from round 1, or after the
    /// checkpoint `resume` carries, each recorded with the checkpoint that follows it. Returns
    /// every round's record, the resumed ones included.
    pub(crate) async fn checkpointed_rounds(
        &self,
        ctx: &JobCtx,
        run: &mut RunFolder,
        events: &broadcast::Sender<v1::WatchEvent>,
        state: &mut crate::round::TrainState,
        resume: Option<Resume>,
    ) -> Result<Vec<RoundRecord>> {
        let mut records = Vec::new();
        let mut first = 1;
        if let Some(r) = resume {
            if let Some(c) = &r.checkpoint {
                state.global.restore(c)?;
            }
            records = r.records;
            first = r.round + 1;
            self.print_text(&[format!(
                "[{}] resuming after round {} of {}",
                ctx.id, r.round, ctx.spec.rounds
            )]);
        }
        for round in first..=ctx.spec.rounds {
            let rec = ctx.run_round(round, state).await?;
            let checkpoint = state.global.checkpoint()?;
            self.record(ctx, run, events, &rec, &checkpoint, true)?;
            records.push(rec);
        }
        Ok(records)
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

/// Where a fusion job stands after a round: the variant to run next and the rounds of it done
/// (with its model when it is part way), and what the finished variants left.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct FusionCheckpoint {
    /// Index of the variant in progress (or next to start) in the job's plan.
    variant: usize,
    /// Rounds of that variant done.
    round: u32,
    /// Its global model's checkpoint after `round` (none when it has not started).
    state: Option<String>,
    results: Vec<crate::report::VariantResult>,
    /// The single-modality models, for late and learned late fusion.
    members: Vec<shoal_shared::fusion::StackMember>,
}

/// Late fusion needs no training: the mean of the single-modality models' probabilities, scored
/// on the coordinator's test set.
fn late_fusion_result(
    members: &[shoal_shared::fusion::StackMember],
    holdout: &shoal_shared::data::Dataset,
    features: usize,
) -> Result<crate::report::VariantResult> {
    let p = shoal_shared::fusion::late_fusion_proba(members, holdout)?;
    let correct = p
        .outer_iter()
        .zip(&holdout.labels)
        .filter(|(row, &y)| shoal_shared::models::sgd::argmax(row.iter().copied()) == y)
        .count();
    Ok(crate::report::VariantResult {
        variant: "late fusion".into(),
        features,
        test_accuracy: correct as f64 / holdout.n_rows().max(1) as f64,
        rounds: 0,
    })
}

/// `fusion.md` and `fusion.svg`: the variants' test accuracy as a table and a bar chart.
fn write_fusion_outputs(run: &RunFolder, variants: &[crate::report::VariantResult]) -> Result<()> {
    let mut md =
        String::from("| variant | features | rounds | test accuracy |\n|---|---|---|---|\n");
    for v in variants {
        md.push_str(&format!(
            "| {} | {} | {} | {:.3} |\n",
            v.variant, v.features, v.rounds, v.test_accuracy
        ));
    }
    let io = |e| {
        Error::io(
            format!("cannot write the fusion table in {}", run.dir().display()),
            e,
        )
    };
    std::fs::write(run.dir().join("fusion.md"), md).map_err(io)?;
    let bars: Vec<(String, f64)> = variants
        .iter()
        .map(|v| (v.variant.clone(), v.test_accuracy))
        .collect();
    let svg =
        shoal_shared::plot::bar_chart_svg("fusion variants", "test accuracy", &bars, (720, 360))?;
    std::fs::write(run.dir().join("fusion.svg"), svg).map_err(io)
}

/// The same model trained centrally on the pooled train rows, scored on the same test set: for
/// weights, as many passes as the federated run made (rounds × local epochs); for a forest, as
/// many trees as the global forest holds. A reference, not a contestant.
async fn centralized_baseline(
    ctx: &JobCtx,
    b: shoal_shared::data::builtin::Builtin,
    state: &crate::round::TrainState,
) -> Option<f64> {
    use shoal_shared::models::Server;
    let holdout = state.facts.holdout.clone()?;
    let seed = ctx.spec.seed;
    let n_classes = state.facts.class_names.len();
    let res = match &state.global {
        Server::Sgd(s) => {
            let model = s.model.clone();
            let mut local = ctx.spec.local.clone();
            local.epochs = local.epochs.saturating_mul(ctx.spec.rounds);
            let init = {
                let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
                model.init(&mut rng)
            };
            tokio::task::spawn_blocking(move || -> shoal_shared::Result<f64> {
                let pool = b.train_pool()?;
                let (w, _) = shoal_shared::models::sgd::train_local(
                    model.as_ref(),
                    init,
                    &pool,
                    &local,
                    seed,
                    &shoal_shared::models::sgd::Objective::default(),
                )?;
                Ok(shoal_shared::models::sgd::evaluate(model.as_ref(), &w, &holdout)?.accuracy)
            })
            .await
        }
        Server::Gbdt(s) => {
            let (ensemble, params) = (s.ensemble.clone()?, s.params.clone());
            let rounds = ctx.spec.rounds;
            tokio::task::spawn_blocking(move || -> shoal_shared::Result<f64> {
                let pool = b.train_pool()?;
                let e = shoal_shared::models::gbdt::train_centralized(
                    &pool,
                    &ensemble.edges,
                    &params,
                    rounds,
                )?;
                Ok(e.evaluate(&holdout)?.accuracy)
            })
            .await
        }
        Server::Forest(s) => {
            let params = shoal_shared::models::forest::ForestParams {
                trees_per_round: s.forest.trees.len().clamp(1, 10_000) as u32,
                ..s.params.clone()
            };
            tokio::task::spawn_blocking(move || -> shoal_shared::Result<f64> {
                let pool = b.train_pool()?;
                let f = shoal_shared::models::forest::fit_trees(&pool, n_classes, &params, seed)?;
                Ok(f.evaluate(&holdout)?.accuracy)
            })
            .await
        }
    };
    match res {
        Ok(Ok(acc)) => Some(acc),
        Ok(Err(e)) => {
            tracing::warn!("centralized baseline failed: {e}");
            None
        }
        Err(e) => {
            tracing::warn!("centralized baseline panicked: {e}");
            None
        }
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
