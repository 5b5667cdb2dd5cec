//! `simulate`: one job over N in-process clients, from flags or a job file.

use super::*;

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
    /// Largest gRPC message between the coordinator and its simulated clients, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Largest task or update that travels in 1 MiB chunks (a model over the message limit), in
    /// bytes.
    #[arg(long, default_value_t = crate::coordinator::DEFAULT_MAX_TRANSFER_BYTES)]
    pub max_transfer_bytes: u64,
    /// Largest model the job may train, in parameters (tensor elements).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_tensor_elements: usize,
    /// Every client holds each training result this many milliseconds before sending it, as a
    /// slower machine would (to try an `[async]` job against stragglers).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub fit_delay_ms: u64,
    /// The first N clients are stragglers: they hold their results --slowdown times as long.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub stragglers: usize,
    /// How many times slower the stragglers are.
    #[arg(long, default_value_t = 5.0, value_name = "X")]
    pub slowdown: f64,
}

pub(super) async fn simulate_cmd(a: SimulateArgs) -> anyhow::Result<i32> {
    let mut spec = match &a.job {
        Some(path) => read_spec(path)?.into_spec(),
        None => JobSpec::parse_toml("kind = \"train\"\nrounds = 30\n")?,
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
    let spec = spec.check()?.into_spec();
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
    let delays = crate::simulate::Delays {
        fit_delay: std::time::Duration::from_millis(a.fit_delay_ms),
        stragglers: a.stragglers,
        slowdown: a.slowdown,
    };
    delays.check(a.clients)?;
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
        max_message_bytes: a.max_message_bytes,
        max_transfer_bytes: a.max_transfer_bytes,
        max_tensor_elements: a.max_tensor_elements,
        attackers: a.attackers,
        attack,
        quiet: false,
        delays,
    })
    .await?;
    Ok(if outcome.status == v1::JobStatus::Finished {
        0
    } else {
        1
    })
}

/// Reads and checks a job file: TOML, or JSON when it ends in `.json`. Errors name the file.
/// The tensors of the spec's `init_file` (an external model with `init = "file"`), read here by
/// the submitting tool: a relative path is taken from the spec file's folder. `None` for other
/// specs. Bounded by `max_elements` values before anything is copied.
pub fn read_init_file(
    spec: &CheckedSpec,
    spec_path: &Path,
    max_elements: usize,
) -> anyhow::Result<Option<shoal_shared::tensor::Weights>> {
    let Some(file) = spec.model.external().and_then(|e| e.init_file.as_deref()) else {
        return Ok(None);
    };
    let path = match spec_path.parent() {
        Some(dir) if Path::new(file).is_relative() => dir.join(file),
        _ => Path::new(file).to_path_buf(),
    };
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "model.init_file: cannot read {} (relative paths start at the spec file's folder)",
            path.display()
        )
    })?;
    let w = shoal_shared::tensor::Weights::from_safetensors(&bytes, max_elements)
        .with_context(|| format!("model.init_file {}", path.display()))?;
    Ok(Some(w))
}

pub fn read_spec(path: &Path) -> anyhow::Result<CheckedSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read job file {}", path.display()))?;
    let spec = if path.extension().is_some_and(|e| e == "json") {
        CheckedSpec::from_json(&text)
    } else {
        CheckedSpec::from_toml(&text)
    };
    spec.with_context(|| format!("job file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_shared::tensor::{Tensor, Weights};

    /// `init_file` is read by the submitting tool, relative to the spec file; a missing or bad
    /// file is named.
    #[test]
    fn init_file_is_read_beside_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let w = Weights::new(vec![
            Tensor::new("w", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap()
        ]);
        std::fs::write(
            dir.path().join("w.safetensors"),
            w.to_safetensors().unwrap(),
        )
        .unwrap();
        let spec_path = dir.path().join("job.toml");
        let job = "kind = \"train\"\ndataset = \"d\"\n[model]\nkind = \"external\"\ninit = \"file\"\ninit_file = \"w.safetensors\"\n";
        std::fs::write(&spec_path, job).unwrap();
        let spec = read_spec(&spec_path).unwrap();
        assert_eq!(read_init_file(&spec, &spec_path, 100).unwrap(), Some(w));
        let err = read_init_file(&spec, &spec_path, 3).unwrap_err();
        assert!(format!("{err:#}").contains("more than 3 values"), "{err:#}");
        std::fs::write(
            &spec_path,
            job.replace("w.safetensors", "missing.safetensors"),
        )
        .unwrap();
        let spec = read_spec(&spec_path).unwrap();
        let err = format!("{:#}", read_init_file(&spec, &spec_path, 100).unwrap_err());
        assert!(
            err.contains("model.init_file") && err.contains("missing.safetensors"),
            "{err}"
        );
    }
}
