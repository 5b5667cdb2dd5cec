//! `simulate`: one coordinator and N clients in this process, talking real gRPC over loopback,
//! exactly as they would across machines.

use std::path::PathBuf;

use anyhow::Context;
use shoal_client::{Catalog, ClientConfig};
use shoal_proto::v1::{self, jobs_client::JobsClient};
use shoal_shared::data::builtin::Builtin;
use shoal_shared::data::partition::Partitioner;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::coordinator::{Coordinator, CoordinatorConfig};
use crate::report::LogFormat;
use crate::spec::JobSpec;
use crate::state::Store;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub spec: JobSpec,
    pub dataset: Builtin,
    pub clients: usize,
    pub scheme: Partitioner,
    pub out: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub log_format: LogFormat,
    /// TEST ONLY: the first `attackers` clients corrupt their updates with `attack`.
    pub attackers: usize,
    pub attack: Option<shoal_client::Attack>,
    /// Print nothing (for studies that run many simulations).
    pub quiet: bool,
    /// Largest gRPC message either side sends or takes (`--max-message-bytes`).
    pub max_message_bytes: usize,
    /// Largest task or update that travels in chunks (`--max-transfer-bytes`).
    pub max_transfer_bytes: u64,
    /// Largest model the job may train, in parameters (`--max-tensor-elements`).
    pub max_tensor_elements: usize,
    /// Injected slowness (`--fit-delay-ms`, `--stragglers`; `study async`).
    pub delays: Delays,
}

/// How long simulated clients hold each training result before sending it, as slower machines
/// would: every client `fit_delay`, and the first `stragglers` clients `slowdown` times that.
/// The default adds nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delays {
    pub fit_delay: std::time::Duration,
    pub stragglers: usize,
    pub slowdown: f64,
}

impl Default for Delays {
    fn default() -> Self {
        Delays {
            fit_delay: std::time::Duration::ZERO,
            stragglers: 0,
            slowdown: 5.0,
        }
    }
}

impl Delays {
    /// Refuses delays that make no sense for `clients` clients, naming the flag.
    pub fn check(&self, clients: usize) -> anyhow::Result<()> {
        if self.stragglers > clients {
            anyhow::bail!(
                "--stragglers {} exceeds --clients {clients}",
                self.stragglers
            );
        }
        if !(self.slowdown.is_finite() && (1.0..=1000.0).contains(&self.slowdown)) {
            anyhow::bail!("--slowdown {}: give a factor from 1 to 1000", self.slowdown);
        }
        if self.fit_delay > std::time::Duration::from_secs(3600) {
            anyhow::bail!(
                "--fit-delay-ms {}: give at most an hour",
                self.fit_delay.as_millis()
            );
        }
        Ok(())
    }

    /// Client `i`'s delay, `None` for none.
    pub fn of(&self, i: usize) -> Option<std::time::Duration> {
        let d = if i < self.stragglers {
            self.fit_delay.mul_f64(self.slowdown)
        } else {
            self.fit_delay
        };
        (!d.is_zero()).then_some(d)
    }
}

impl SimulateOptions {
    /// Defaults for `spec` on a built-in dataset: 10 clients, dirichlet:0.5, runs/.
    pub fn new(spec: JobSpec, dataset: Builtin) -> Self {
        SimulateOptions {
            spec,
            dataset,
            clients: 10,
            scheme: Partitioner::Dirichlet { alpha: 0.5 },
            out: PathBuf::from("runs"),
            state_dir: None,
            log_format: LogFormat::Text,
            attackers: 0,
            attack: None,
            quiet: false,
            max_message_bytes: CoordinatorConfig::default().max_message_bytes,
            max_transfer_bytes: CoordinatorConfig::default().max_transfer_bytes,
            max_tensor_elements: CoordinatorConfig::default().max_tensor_elements,
            delays: Delays::default(),
        }
    }
}

/// The simulated job's end state.
#[derive(Debug, Clone)]
pub struct SimOutcome {
    pub job: v1::JobInfo,
    pub status: v1::JobStatus,
    /// Every round's report, in order.
    pub rounds: Vec<v1::RoundReport>,
}

/// Runs one job over `clients` in-process clients and returns when it has ended.
pub async fn simulate(mut o: SimulateOptions) -> anyhow::Result<SimOutcome> {
    if o.clients == 0 {
        anyhow::bail!("--clients must be at least 1");
    }
    if o.spec.model.external().is_some() {
        anyhow::bail!(
            "simulate runs Shoal's built-in clients, which cannot train an external model; run `serve` and connect clients that have a trainer (the Python SDK, or a Rust Trainer: see docs/guide/own-model.md)"
        );
    }
    o.spec.dataset = o.dataset.name().to_string();
    let n = o.clients as u32;
    let c = &mut o.spec.clients;
    if c.min_fit_clients > n || c.min_evaluate_clients > n {
        anyhow::bail!(
            "the job asks for at least {} clients (min_fit_clients / min_evaluate_clients) but --clients is {n}",
            c.min_fit_clients.max(c.min_evaluate_clients)
        );
    }
    // Every simulated client connects within milliseconds: start once all of them are there.
    c.min_available_clients = n;
    // Only to refuse a bad spec before any client starts: the Jobs service checks what it is sent.
    o.spec.clone().check()?;

    // The shards a client on its own machine derives with `--shard i/N` (`Builtin::shard`), all
    // partitioned at once: partitioning once per client would cost N passes over the pool.
    let (dataset, scheme, seed, count) = (o.dataset, o.scheme, o.spec.seed, o.clients);
    let catalogs = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Catalog>> {
        let shards = dataset
            .shards(&scheme, count, seed)
            .with_context(|| format!("partitioning {} for {count} clients", dataset.name()))?;
        shards
            .into_iter()
            .enumerate()
            .map(|(i, rows)| {
                let mut c = Catalog::new();
                c.insert(dataset.name(), rows, seed)
                    .with_context(|| format!("client {i}"))?;
                Ok(c)
            })
            .collect()
    })
    .await??;

    let store = match &o.state_dir {
        Some(dir) => Store::open(dir)?,
        None => Store::in_memory()?,
    };
    let coord = Coordinator::new(
        CoordinatorConfig {
            runs_dir: o.out.clone(),
            log_format: o.log_format,
            prefix_job_id: false,
            print_rounds: !o.quiet,
            // Every simulated client connects; `serve` keeps its own `--max-clients`.
            max_clients: o.clients.max(CoordinatorConfig::default().max_clients),
            max_message_bytes: o.max_message_bytes,
            max_transfer_bytes: o.max_transfer_bytes,
            max_tensor_elements: o.max_tensor_elements,
            ..CoordinatorConfig::default()
        },
        store,
    )?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let server = tokio::spawn(crate::server::serve(
        listener,
        coord,
        stop.clone().cancelled_owned(),
    ));
    let mut clients = Vec::with_capacity(o.clients);
    let mut shared = None;
    for (i, catalog) in catalogs.into_iter().enumerate() {
        let mut config = ClientConfig::new(url.clone(), format!("client-{i:03}"), catalog);
        // A few connections for many clients: one TCP connection (two file descriptors in this
        // process) per client would run out of descriptors at about 10,000 clients.
        if i % shoal_client::connection::SESSIONS_PER_CONNECTION == 0 {
            shared = Some(shoal_client::endpoint(&url)?.connect_lazy());
        }
        config.channel = shared.clone();
        config.max_message_bytes = o.max_message_bytes;
        config.max_transfer_bytes = o.max_transfer_bytes;
        if i < o.attackers {
            config.attack = o.attack;
        }
        config.fit_delay = o.delays.of(i);
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            shoal_client::run(config, stop.cancelled_owned()).await
        }));
    }

    let result = drive(&url, &o).await;
    stop.cancel();
    for c in clients {
        if let Ok(Err(e)) = c.await {
            tracing::warn!("simulated client ended with: {e}");
        }
    }
    server.await??;
    result
}

/// Submits the job through the Jobs API and follows it to its end.
async fn drive(url: &str, o: &SimulateOptions) -> anyhow::Result<SimOutcome> {
    let mut jobs = JobsClient::new(shoal_client::endpoint(url)?.connect().await?);
    let info = jobs
        .submit(v1::SubmitRequest {
            spec: o.spec.to_toml(),
            format: "toml".into(),
            // simulate refuses external models, the only ones with initial parameters
            initial_parameters: None,
        })
        .await?
        .into_inner();
    if !o.quiet {
        let attackers = match (o.attackers, o.attack) {
            (0, _) | (_, None) => String::new(),
            (n, Some(a)) => format!("  {n} attackers ({a}, TEST ONLY)"),
        };
        let split = match o.dataset {
            Builtin::SeedFl => "one concept per client".to_string(),
            Builtin::Signals => "one frequency band per client".to_string(),
            _ => o.scheme.to_string(),
        };
        crate::report::print_lines(&[format!(
            "simulate  job {}  {} clients  {} on {} ({split})  {}  {} rounds{attackers}  run folder {}",
            info.job_id,
            o.clients,
            o.spec.model.label(),
            o.spec.dataset,
            o.spec.aggregation_label(),
            o.spec.rounds,
            info.run_dir
        )]);
    }
    let mut stream = jobs
        .watch(v1::WatchRequest {
            job_id: info.job_id.clone(),
        })
        .await?
        .into_inner();
    let mut rounds = Vec::new();
    while let Some(ev) = stream.message().await? {
        match ev.event {
            Some(v1::watch_event::Event::Round(r)) => rounds.push(r),
            Some(v1::watch_event::Event::Finished(job)) => {
                let status =
                    v1::JobStatus::try_from(job.status).unwrap_or(v1::JobStatus::Unspecified);
                if status != v1::JobStatus::Finished && !o.quiet {
                    eprintln!(
                        "error: job {} {}: {}",
                        job.job_id,
                        status.as_str_name(),
                        job.error
                    );
                }
                return Ok(SimOutcome {
                    job,
                    status,
                    rounds,
                });
            }
            None => {}
        }
    }
    anyhow::bail!("the coordinator closed the watch before the job ended")
}
