//! `partition`: a dataset split into per-client CSV shards and a test set.

use super::*;

#[derive(Debug, Args)]
pub struct PartitionArgs {
    /// A built-in dataset (digits, seed-fl, iris, winequality, multimodal, signals, classification) or a CSV file.
    #[arg(long)]
    pub dataset: String,
    /// Label column when --dataset is a CSV file (default: the last column).
    #[arg(long)]
    pub label_column: Option<String>,
    /// Number of clients.
    #[arg(long)]
    pub clients: usize,
    /// iid, dirichlet:ALPHA, shards:K or quantity:ALPHA.
    #[arg(long, default_value = "dirichlet:0.5")]
    pub scheme: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory: client-0.csv ... client-(N-1).csv and test.csv.
    #[arg(long)]
    pub out: PathBuf,
}

pub(super) fn partition_cmd(a: &PartitionArgs) -> anyhow::Result<()> {
    let scheme: Partitioner = a.scheme.parse().context("--scheme")?;
    if a.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let (shards, test): (Vec<Dataset>, Dataset) = match a.dataset.parse::<Builtin>() {
        Ok(b) => (b.shards(&scheme, a.clients, a.seed)?, b.holdout()?),
        Err(unknown) => {
            let path = Path::new(&a.dataset);
            if !path.exists() {
                bail!("{unknown}, nor a CSV file that exists");
            }
            let data = csv::load_csv(path, a.label_column.as_deref())?;
            let (train, test) = stratified_split(
                &data.labels,
                data.n_classes(),
                shoal_shared::data::builtin::HOLDOUT_FRACTION,
                a.seed,
            );
            let pool = data.select(&train);
            let parts = scheme.partition(&pool.labels, pool.n_classes(), a.clients, a.seed)?;
            (
                parts.iter().map(|p| pool.select(p)).collect(),
                data.select(&test),
            )
        }
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    for (i, s) in shards.iter().enumerate() {
        s.to_csv(&a.out.join(format!("client-{i}.csv")))?;
    }
    test.to_csv(&a.out.join("test.csv"))?;
    print!("{}", partition_table(&shards, &test));
    println!(
        "wrote {} shards and test.csv to {}",
        shards.len(),
        a.out.display()
    );
    Ok(())
}

/// Rows and label histogram per client, one row per client.
pub fn partition_table(shards: &[Dataset], test: &Dataset) -> String {
    let classes = &test.class_names;
    let width = classes.iter().map(String::len).max().unwrap_or(1).max(4);
    let mut out = format!("{:<10}{:>6}", "client", "rows");
    for c in classes {
        out.push_str(&format!(" {c:>width$}"));
    }
    out.push('\n');
    let mut row = |label: String, d: &Dataset| {
        out.push_str(&format!("{label:<10}{:>6}", d.n_rows()));
        for n in d.class_counts() {
            out.push_str(&format!(" {n:>width$}"));
        }
        out.push('\n');
    };
    for (i, s) in shards.iter().enumerate() {
        row(format!("client-{i}"), s);
    }
    row("test".into(), test);
    out
}
