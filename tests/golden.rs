//! Golden outputs: seeded simulations of every model kind and job kind, compared bit for bit with
//! fixtures recorded before the algorithm boundary was drawn (S7), so refactors prove they change
//! no behaviour.
//!
//! Each case runs `simulate` in this process and reduces its run folder to one text: `metrics.csv`
//! without the `seconds` column, `metrics.jsonl` (full-precision floats) without `seconds`, and the
//! SHA-256 of every other output a job writes that does not hold a time or a job id (the final
//! model, the client table, the fusion table, the generated signals) and of `summary.json` without the job id and times. The text must equal
//! `tests/golden/<case>.txt`.
//!
//! After a change that is meant to change outputs, rerun with `SHOAL_BLESS=1` to rewrite the
//! fixtures, and say in the commit which figures moved and why. A mismatch otherwise is a
//! regression. The fixtures hold for this machine's kind (x86-64 with AVX2/FMA): `matrixmultiply`
//! picks its kernel at run time, and another kernel rounds differently.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use shoal_coordinator::simulate::SimulateOptions;
use shoal_coordinator::spec::CheckedSpec;
use shoal_shared::data::builtin::Builtin;
use shoal_shared::data::partition::Partitioner;

/// Run-folder files whose bytes are part of the golden text (those that exist for a case).
const HASHED: &[&str] = &[
    "model.json",
    "model.safetensors",
    "clients.csv",
    "generated.csv",
    "fusion.md",
];

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(format!("{case}.txt"))
}

/// Runs `toml` on `clients` clients of `dataset` split by `scheme` and returns the golden text.
async fn golden_text(toml: &str, dataset: Builtin, clients: usize, scheme: Partitioner) -> String {
    let spec = CheckedSpec::from_toml(toml).unwrap().into_spec();
    let mut o = SimulateOptions::new(spec, dataset);
    o.clients = clients;
    o.scheme = scheme;
    let run = crate::util::simulate_finished(o, toml).await;
    let outcome = &run.outcome;
    let dir = PathBuf::from(&outcome.job.run_dir);
    let mut text = String::from("# metrics.csv without seconds\n");
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    for line in csv.lines() {
        let cols: Vec<&str> = line.split(',').collect();
        assert_eq!(cols.last().map(|c| c.is_empty()), Some(false), "{line}");
        text.push_str(&cols[..cols.len() - 1].join(","));
        text.push('\n');
    }
    text.push_str("# metrics.jsonl without seconds\n");
    let jsonl = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    for line in jsonl.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v.as_object_mut().unwrap().remove("seconds");
        text.push_str(&v.to_string());
        text.push('\n');
    }
    text.push_str("# sha256 of outputs\n");
    // The summary without what differs between runs: the job id and every `seconds`.
    let mut summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    strip(&mut summary, &["job_id", "seconds", "round_seconds"]);
    text.push_str(&format!(
        "summary.json {}\n",
        sha256(summary.to_string().as_bytes())
    ));
    for name in HASHED {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            text.push_str(&format!("{name} {}\n", sha256(&bytes)));
        }
    }
    text
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Removes the keys `names` at every depth of `v`.
fn strip(v: &mut serde_json::Value, names: &[&str]) {
    match v {
        serde_json::Value::Object(map) => {
            for n in names {
                map.remove(*n);
            }
            map.values_mut().for_each(|x| strip(x, names));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|x| strip(x, names)),
        _ => {}
    }
}

/// Compares with (or, under `SHOAL_BLESS=1`, writes) the case's fixture.
fn check(case: &str, actual: &str) {
    let path = fixture(case);
    if std::env::var_os("SHOAL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; record it with SHOAL_BLESS=1 (see tests/golden.rs)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .find(|(_, (e, a))| e != a);
        let out = std::env::temp_dir().join(format!("shoal-golden-{case}.txt"));
        std::fs::write(&out, actual).unwrap();
        panic!(
            "golden case `{case}` changed (actual output in {}); first difference: {first:?}",
            out.display()
        );
    }
}

fn train(model: &str, strategy: &str, rounds: u32) -> String {
    format!(
        "kind = \"train\"\ndataset = \"digits\"\nrounds = {rounds}\nseed = 7\n\
         [model]\n{model}\n[strategy]\n{strategy}\n\
         [clients]\nmin_fit_clients = 2\nmin_evaluate_clients = 2\n"
    )
}

async fn digits_case(case: &str, model: &str, strategy: &str) {
    let toml = train(model, strategy, 4);
    let text = golden_text(&toml, Builtin::Digits, 6, "dirichlet:0.5".parse().unwrap()).await;
    check(case, &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_logreg_fedavg() {
    digits_case("logreg-fedavg", "kind = \"logreg\"", "name = \"fedavg\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_mlp_fedavg() {
    digits_case(
        "mlp-fedavg",
        "kind = \"mlp\"\nhidden = [16]",
        "name = \"fedavg\"",
    )
    .await;
}

/// The server-optimiser family (FedAvgM shares its code path with FedAdagrad and FedYogi).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_server_optimisers() {
    digits_case(
        "logreg-fedavgm",
        "kind = \"logreg\"",
        "name = \"fedavgm\"\nserver_momentum = 0.5",
    )
    .await;
    digits_case("logreg-fedadam", "kind = \"logreg\"", "name = \"fedadam\"").await;
    digits_case(
        "logreg-fedadagrad",
        "kind = \"logreg\"",
        "name = \"fedadagrad\"",
    )
    .await;
    digits_case("logreg-fedyogi", "kind = \"logreg\"", "name = \"fedyogi\"").await;
}

/// Sampling, evaluation every other round and a two-layer MLP with personalised client scores:
/// the round engine's options beyond the defaults. (Over-selection keeps whichever updates arrive
/// first, so it is not reproducible by design and has no golden case.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_round_options() {
    let toml = "kind = \"train\"\ndataset = \"digits\"\nrounds = 4\nseed = 11\n\
                [model]\nkind = \"mlp\"\nhidden = [12, 8]\n\
                [clients]\nfraction_fit = 0.5\nfraction_evaluate = 0.5\nmin_fit_clients = 2\n\
                min_evaluate_clients = 2\n\
                [evaluation]\nevery = 2\npersonalize_epochs = 1\n";
    let text = golden_text(toml, Builtin::Digits, 8, "shards:2".parse().unwrap()).await;
    check("mlp-sampled", &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_fedprox_and_scaffold() {
    digits_case(
        "logreg-fedprox",
        "kind = \"logreg\"",
        "name = \"fedprox\"\nproximal_mu = 0.1",
    )
    .await;
    digits_case(
        "mlp-scaffold",
        "kind = \"mlp\"\nhidden = [16]",
        "name = \"scaffold\"",
    )
    .await;
}

/// The robust family: strategies that hold every update of a round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_robust_strategies() {
    digits_case(
        "logreg-fedmedian",
        "kind = \"logreg\"",
        "name = \"fedmedian\"",
    )
    .await;
    digits_case(
        "logreg-fedtrimmedavg",
        "kind = \"logreg\"",
        "name = \"fedtrimmedavg\"",
    )
    .await;
    digits_case(
        "logreg-multikrum",
        "kind = \"logreg\"",
        "name = \"multikrum\"\nnum_malicious_clients = 1",
    )
    .await;
    digits_case(
        "logreg-krum",
        "kind = \"logreg\"",
        "name = \"krum\"\nnum_malicious_clients = 1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_forest_on_seed_fl() {
    let toml = "kind = \"train\"\ndataset = \"seed-fl\"\nrounds = 3\nseed = 7\n\
                [model]\nkind = \"forest\"\ntrees_per_round = 3\nmax_features = 0.5\n\
                [clients]\nmin_fit_clients = 2\nmin_evaluate_clients = 2\n";
    let text = golden_text(toml, Builtin::SeedFl, 3, Partitioner::Iid).await;
    check("forest-seed-fl", &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_gbdt() {
    let toml = "kind = \"train\"\ndataset = \"iris\"\nrounds = 3\nseed = 7\n\
                [model]\nkind = \"gbdt\"\nmax_depth = 3\n\
                [clients]\nmin_fit_clients = 2\nmin_evaluate_clients = 2\n";
    let text = golden_text(toml, Builtin::Iris, 3, Partitioner::Iid).await;
    check("gbdt-iris", &text);
    // Binary (one output), deeper trees, more clients.
    let toml = "kind = \"train\"\ndataset = \"classification\"\nrounds = 3\nseed = 7\n\
                [model]\nkind = \"gbdt\"\nmax_depth = 4\n\
                [clients]\nmin_fit_clients = 2\nmin_evaluate_clients = 2\n";
    let text = golden_text(toml, Builtin::Classification, 4, Partitioner::Iid).await;
    check("gbdt-classification", &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_fusion() {
    let toml = "kind = \"fusion\"\ndataset = \"multimodal\"\nrounds = 2\nseed = 7\n\
                [model]\nkind = \"logreg\"\n\
                [local]\nlr = 0.02\n\
                [clients]\nmin_fit_clients = 2\nmin_evaluate_clients = 2\n";
    let text = golden_text(toml, Builtin::Multimodal, 3, Partitioner::Iid).await;
    check("fusion-multimodal", &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_diffusion() {
    let toml = "kind = \"diffusion\"\ndataset = \"signals\"\nrounds = 2\nseed = 7\n\
                [model]\nkind = \"denoiser\"\nhidden = [32]\nembed_dim = 8\nsteps = 20\n\
                schedule = { kind = \"cosine\", s = 0.008 }\n\
                [local]\nepochs = 2\nlr = 0.1\n\
                [clients]\nmin_fit_clients = 3\nmin_available_clients = 3\nmin_evaluate_clients = 3\n\
                [diffusion]\nsamples = 6\n";
    let text = golden_text(toml, Builtin::Signals, 3, Partitioner::Iid).await;
    check("diffusion-signals", &text);
}

/// One trial at a time: with parallel trials, `metrics.csv` has a row per finished trial in the
/// order they finish, which depends on timing. The trials train logistic regression: forests on
/// `classification` are not bit-reproducible today (linfa-trees sums its Gini impurities over a
/// `HashMap` in f32, in an order that changes from process to process, so near-tied splits can go
/// either way); the forest case above, on `seed-fl`, is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_automl_grid() {
    let toml = "kind = \"automl\"\ndataset = \"classification\"\nrounds = 2\nseed = 7\n\
                [model]\nkind = \"logreg\"\n\
                [clients]\nmin_fit_clients = 3\nmin_available_clients = 3\nmin_evaluate_clients = 3\n\
                [automl]\nsearch = \"grid\"\nparallel_trials = 1\n\
                [automl.space]\n\"local.lr\" = [0.05, 0.2]\n\"local.epochs\" = [1, 3]\n";
    let text = golden_text(toml, Builtin::Classification, 3, Partitioner::Iid).await;
    check("automl-grid", &text);
}
