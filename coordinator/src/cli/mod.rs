//! The `shoal-coordinator` command line, a file per subcommand: `serve`, `simulate`, `partition`,
//! `job ...`, `study ...` and `bench ...`, `health`; `certs` and `tokens` here.
//!
//! Parsing lives here so `main.rs` stays a few lines and tests can drive [`run_cli`].

mod health;
mod job;
mod partition;
mod serve;
mod simulate;
mod study;

use health::health_cmd;
pub use health::HealthArgs;
use job::job_cmd;
pub use job::{connect_jobs_with, AdminJobs, AdminToken, JobCommand, Remote};
use partition::partition_cmd;
pub use partition::{partition_table, PartitionArgs};
use serve::serve_cmd;
pub use serve::ServeArgs;
use simulate::simulate_cmd;
pub use simulate::{read_spec, SimulateArgs};
use study::study_cmd;
pub use study::{BenchCommand, StudyCommand};

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
use crate::spec::{CheckedSpec, JobSpec};
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
        Command::Bench(BenchCommand::Scale { clients, rounds }) => {
            let sizes: Vec<usize> = clients
                .split(',')
                .map(|c| c.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .ok()
                .filter(|s: &Vec<usize>| !s.is_empty() && s.iter().all(|&n| n >= 2))
                .with_context(|| {
                    format!("--clients {clients}: give client counts of at least 2, comma-separated (e.g. 100,1000,10000)")
                })?;
            if rounds == 0 {
                bail!("--rounds must be at least 1");
            }
            tokio::task::spawn_blocking(move || crate::bench::scale::scale(&sizes, rounds))
                .await?
                .map(|_| 0)
        }
        Command::Bench(BenchCommand::Transfer { params, repeats }) => {
            if params == 0 || repeats == 0 || params > 1 << 30 {
                bail!("--params must be 1 to 1073741824 and --repeats at least 1");
            }
            crate::bench::transfer::transfer(params, repeats)
                .await
                .map(|_| 0)
        }
        Command::Bench(BenchCommand::Aggregate {
            hidden,
            clients,
            repeats,
        }) => {
            let hidden =
                shoal_shared::models::ModelSpec::parse_hidden(&hidden).context("--hidden")?;
            if clients == 0 || repeats == 0 || hidden.contains(&0) {
                bail!("--clients, --repeats and every --hidden width must be at least 1");
            }
            crate::bench::aggregate::aggregate(&hidden, clients, repeats).map(|_| 0)
        }
        Command::Bench(BenchCommand::Gbdt { rounds, repeats }) => {
            if rounds == 0 || repeats == 0 {
                bail!("--rounds and --repeats must be at least 1");
            }
            crate::bench::gbdt(rounds, repeats).await.map(|_| 0)
        }
    }
}
