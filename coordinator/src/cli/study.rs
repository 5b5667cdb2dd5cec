//! `study ...` and `bench ...`: many simulations or measurements, one table.

use super::*;
use shoal_shared::compress::Compression;

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
    /// Update compression on digits: bytes up and final accuracy of each codec (none, f16, bf16,
    /// int8, top-k) as a markdown table, one simulation each.
    Compression {
        #[arg(long, default_value_t = 30)]
        rounds: u32,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Hidden layer widths of the MLP.
        #[arg(long, default_value = "64")]
        hidden: String,
        /// Partition scheme.
        #[arg(long, default_value = "dirichlet:0.5")]
        partition: Partitioner,
        /// Top-k shares to try (comma-separated, each in (0, 1]).
        #[arg(long, default_value = "0.1,0.01")]
        topk: String,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Where compression.md and the run folders go.
        #[arg(long, default_value = "study")]
        out: PathBuf,
    },
    /// Synchronous rounds against asynchronous steps (`[async]`, FedBuff) on digits with
    /// stragglers: the time each takes to reach the synchronous run's final accuracy.
    Async {
        /// Rounds of the synchronous run.
        #[arg(long, default_value_t = 30)]
        rounds: u32,
        /// Most steps of the asynchronous run.
        #[arg(long, default_value_t = 90)]
        steps: u32,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Every client holds each training result this long (milliseconds).
        #[arg(long, default_value_t = 100)]
        fit_delay_ms: u64,
        /// The first N clients are stragglers.
        #[arg(long, default_value_t = 2)]
        stragglers: usize,
        /// How many times slower the stragglers are.
        #[arg(long, default_value_t = 5.0)]
        slowdown: f64,
        /// async.concurrency of the asynchronous run.
        #[arg(long, default_value_t = 10)]
        concurrency: u32,
        /// async.buffer_size of the asynchronous run.
        #[arg(long, default_value_t = 5)]
        buffer_size: u32,
        /// Hidden layer widths of the MLP.
        #[arg(long, default_value = "64")]
        hidden: String,
        /// Partition scheme.
        #[arg(long, default_value = "dirichlet:0.5")]
        partition: Partitioner,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Where async.md and the run folders go.
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

pub(super) async fn study_cmd(cmd: StudyCommand) -> anyhow::Result<()> {
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
        StudyCommand::Compression {
            rounds,
            clients,
            hidden,
            partition,
            topk,
            seed,
            out,
        } => {
            if rounds == 0 || clients == 0 {
                bail!("--rounds and --clients must be at least 1");
            }
            let mut codecs = vec![
                Compression::None,
                Compression::F16,
                Compression::Bf16,
                Compression::Int8,
            ];
            for share in topk.split(',').filter(|s| !s.trim().is_empty()) {
                let fraction: f64 = share
                    .trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--topk: `{share}` is not a number"))?;
                codecs.push(Compression::parse("topk", fraction).context("--topk")?);
            }
            let study = crate::bench::study::CompressionStudy {
                codecs,
                hidden: shoal_shared::models::ModelSpec::parse_hidden(&hidden)?,
                rounds,
                clients,
                scheme: partition,
                seed,
                out,
            };
            crate::bench::study::run_compression(&study).await?;
            Ok(())
        }
        StudyCommand::Async {
            rounds,
            steps,
            clients,
            fit_delay_ms,
            stragglers,
            slowdown,
            concurrency,
            buffer_size,
            hidden,
            partition,
            seed,
            out,
        } => {
            if rounds == 0 || steps == 0 || clients == 0 {
                bail!("--rounds, --steps and --clients must be at least 1");
            }
            let delays = crate::simulate::Delays {
                fit_delay: std::time::Duration::from_millis(fit_delay_ms),
                stragglers,
                slowdown,
            };
            delays.check(clients)?;
            let study = crate::bench::study::AsyncStudy {
                rounds,
                steps,
                clients,
                delays,
                concurrency,
                buffer_size,
                hidden: shoal_shared::models::ModelSpec::parse_hidden(&hidden)?,
                scheme: partition,
                seed,
                out,
            };
            crate::bench::study::run_async(&study).await?;
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

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// A round's aggregation (fedavg) against a memcpy of the same bytes, and the round's
    /// checkpoint beside it.
    Aggregate {
        /// Hidden layer widths of the MLP (over digits' 64 features, 10 classes).
        #[arg(long, default_value = "2048,2048")]
        hidden: String,
        /// Client updates per round.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Repetitions; the best is reported.
        #[arg(long, default_value_t = 3)]
        repeats: u32,
    },
    /// A large model's round trip over loopback gRPC (a task down and an update back, in 1 MiB
    /// chunks, decoded at each end) against raw loopback TCP moving the same bytes.
    Transfer {
        /// The model's size, in f32 parameters (25,000,000: 100 MB a message).
        #[arg(long, default_value_t = 25_000_000)]
        params: usize,
        /// Repetitions; the best is reported.
        #[arg(long, default_value_t = 3)]
        repeats: u32,
    },
    /// Seconds per round and peak memory against the number of clients (seed-fl, logreg; each
    /// size a `simulate` child process).
    Scale {
        /// Client counts, smallest first (the baseline).
        #[arg(long, default_value = "100,1000,10000")]
        clients: String,
        /// Rounds of each run.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
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
