//! How rounds and summaries look: the stdout line, and the run folder (`runs/<job-id>/`) that
//! exports a job's state: `spec.toml`, `metrics.csv`, `metrics.jsonl`, `model.json`, `summary.json`.

/// Charts and `report.html`.
pub mod html;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::round::{ClientRow, RoundRecord};
use crate::error::{Error, Result};

/// The exact header of `metrics.csv`.
pub const CSV_HEADER: &str =
    "round,clients,train_loss,fed_loss,fed_accuracy,test_accuracy,bytes_up,bytes_down,seconds";

/// How round lines are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `round 7/30  clients 10/10  train_loss 0.231  ...`
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Decimal byte sizes as people read them: `512 B`, `12.3 kB`, `1.2 MB`.
pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b < 1e3 {
        format!("{b} B")
    } else if b < 1e6 {
        format!("{:.1} kB", b / 1e3)
    } else if b < 1e9 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.2} GB", b / 1e9)
    }
}

fn opt3(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"))
}

/// The human round line.
pub fn round_line(r: &RoundRecord) -> String {
    // A model without accuracy (a diffusion denoiser) is followed by its held-out losses.
    let scores = if r.fed_accuracy.is_none()
        && r.test_accuracy.is_none()
        && (r.fed_loss.is_some() || r.test_loss.is_some())
    {
        format!(
            "fed_loss {}  test_loss {}",
            opt3(r.fed_loss),
            opt3(r.test_loss)
        )
    } else {
        format!(
            "fed_acc {}  test_acc {}",
            opt3(r.fed_accuracy),
            opt3(r.test_accuracy)
        )
    };
    let mut line = format!(
        "round {}/{}  clients {}/{}  train_loss {:.3}  {scores}  up {}  down {}  {:.2} s",
        r.round,
        r.rounds_total,
        r.clients,
        r.clients_selected,
        r.train_loss,
        human_bytes(r.bytes_up),
        human_bytes(r.bytes_down),
        r.seconds
    );
    if let Some(age) = r.staleness {
        line.push_str(&format!("  staleness {age:.1}"));
    }
    if r.rejected > 0 {
        line.push_str(&format!("  rejected {}", r.rejected));
        if !r.rejected_by.is_empty() {
            let by: Vec<String> = r
                .rejected_by
                .iter()
                .map(|(c, n)| match r.late_by.get(c) {
                    Some(late) if *late > 0 => format!("{c}: {n}, {late} late"),
                    _ => format!("{c}: {n}"),
                })
                .collect();
            line.push_str(&format!(" ({})", by.join(", ")));
        }
    }
    if !r.quarantined.is_empty() {
        line.push_str(&format!("  quarantined {}", r.quarantined.join(", ")));
    }
    line
}

/// Prints one round to stdout in the chosen format; `job` prefixes the line when several jobs may
/// share the output (`serve`).
pub fn print_round(format: LogFormat, job: Option<&str>, r: &RoundRecord) {
    let line = match format {
        LogFormat::Text => match job {
            Some(j) => format!("[{j}] {}", round_line(r)),
            None => round_line(r),
        },
        LogFormat::Json => {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            if let (Some(j), Some(obj)) = (job, v.as_object_mut()) {
                obj.insert("job".into(), j.into());
            }
            v.to_string()
        }
    };
    print_lines(&[line]);
}

/// Writes lines to stdout; a closed stdout (`| head`) is ignored rather than fatal.
pub fn print_lines(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    for l in lines {
        if writeln!(out, "{l}").is_err() {
            return;
        }
    }
    let _ = out.flush();
}

/// End-of-job summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub job_id: String,
    pub dataset: String,
    pub model: String,
    pub strategy: String,
    pub rounds: u32,
    /// Round with the best test accuracy (or federated accuracy when there is no test set).
    pub best_round: Option<u32>,
    pub best_accuracy: Option<f64>,
    pub final_test_accuracy: Option<f64>,
    pub final_fed_accuracy: Option<f64>,
    /// The same model trained centrally on the pooled train rows, scored on the same test set.
    pub centralized_test_accuracy: Option<f64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The job's wall time: from submission to its end, waits, restarts and the end-of-job
    /// phase (client table, baseline) included.
    pub seconds: f64,
    /// The time its rounds took, summed (each round's `seconds` in `metrics.csv`).
    #[serde(default)]
    pub round_seconds: f64,
    /// The final global model as each client sees it.
    pub clients: Vec<ClientRow>,
    /// Fusion jobs: each variant's test accuracy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantResult>,
    /// AutoML jobs: the trials, the best configuration, and the test accuracy of best and default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automl: Option<AutomlResult>,
    /// Diffusion jobs: the schedule and what the final model generates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffusion: Option<DiffusionResult>,
}

/// An AutoML search's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutomlResult {
    pub search: String,
    /// Every trial, in the order they finished (trial 0 is the default configuration).
    pub trials: Vec<TrialRow>,
    pub best_trial: u32,
    pub best_config: String,
    pub best_validation_accuracy: f64,
    /// The coordinator's test set, used once for the best configuration and once for the default.
    pub best_test_accuracy: Option<f64>,
    pub default_validation_accuracy: Option<f64>,
    pub default_test_accuracy: Option<f64>,
}

/// One trial of an AutoML search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRow {
    pub trial: u32,
    pub config: String,
    /// Rounds the trial ran.
    pub budget: u32,
    /// Federated validation accuracy after its last round.
    pub score: Option<f64>,
    pub seconds: f64,
    /// `ok`, or why it failed.
    pub status: String,
}

impl AutomlResult {
    pub fn lines(&self) -> Vec<String> {
        let opt = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.4}"));
        let mut ranked: Vec<&TrialRow> = self.trials.iter().filter(|t| t.score.is_some()).collect();
        ranked.sort_by(|a, b| {
            b.score
                .unwrap_or(f64::MIN)
                .total_cmp(&a.score.unwrap_or(f64::MIN))
                .then(a.trial.cmp(&b.trial))
        });
        let mut out = vec![format!(
            "  automl ({} search, {} trials): best trial {}  {}",
            self.search,
            self.trials.len(),
            self.best_trial,
            self.best_config
        )];
        out.push(format!(
            "  best     validation accuracy {:.4}  test accuracy {}",
            self.best_validation_accuracy,
            opt(self.best_test_accuracy)
        ));
        out.push(format!(
            "  default  validation accuracy {}  test accuracy {}",
            opt(self.default_validation_accuracy),
            opt(self.default_test_accuracy)
        ));
        out.push("  top trials:".into());
        for t in ranked.iter().take(5) {
            out.push(format!(
                "    trial {:>3}  {:.4}  {} rounds  {}",
                t.trial,
                t.score.unwrap_or(f64::NAN),
                t.budget,
                t.config
            ));
        }
        let failed = self.trials.iter().filter(|t| t.status != "ok").count();
        if failed > 0 {
            out.push(format!("  {failed} trials failed (see trials.md)"));
        }
        out
    }
}

/// What a diffusion job's final model generates, judged against the coordinator's real signals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusionResult {
    /// ᾱ_T of the schedule: how much signal variance survives to the last step.
    pub final_alpha_bar: f64,
    /// Signals generated from pure noise.
    pub samples: u32,
    /// Held-out noise-prediction MSE (federated) after the first and the last round.
    pub first_noise_mse: Option<f64>,
    pub last_noise_mse: Option<f64>,
    /// Per band (class) of the real test signals: how many generated signals lie nearest to it.
    pub coverage: Vec<BandCoverage>,
    /// Mean squared distance from a generated signal to its nearest real one: the trained
    /// model's, and an untrained network's from the same noise (the reference).
    pub nearest_distance: Option<f64>,
    pub untrained_nearest_distance: Option<f64>,
    /// The same between real test signals (each to its nearest other one): the floor.
    pub real_nearest_distance: Option<f64>,
}

/// One band's share of the generated signals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BandCoverage {
    pub band: String,
    pub nearest: u32,
    pub share: f64,
}

/// One fusion variant's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantResult {
    pub variant: String,
    /// Features the variant's model sees.
    pub features: usize,
    pub test_accuracy: f64,
    /// Rounds of federated training (0 for late fusion, which combines trained models).
    pub rounds: u32,
}

impl Summary {
    pub fn from_rounds(job_id: &str, spec: &crate::spec::JobSpec, rounds: &[RoundRecord]) -> Self {
        let metric = |r: &RoundRecord| r.test_accuracy.or(r.fed_accuracy);
        let best = rounds
            .iter()
            .filter_map(|r| metric(r).map(|m| (r.round, m)))
            .fold(None, |best: Option<(u32, f64)>, (round, m)| match best {
                Some((_, bm)) if bm >= m => best,
                _ => Some((round, m)),
            });
        let last = rounds.last();
        Summary {
            job_id: job_id.to_string(),
            dataset: spec.dataset.clone(),
            model: spec.model.label(),
            strategy: spec.aggregation_label().to_string(),
            rounds: rounds.len() as u32,
            best_round: best.map(|b| b.0),
            best_accuracy: best.map(|b| b.1),
            final_test_accuracy: last.and_then(|r| r.test_accuracy),
            final_fed_accuracy: rounds.iter().rev().find_map(|r| r.fed_accuracy),
            centralized_test_accuracy: None,
            bytes_up: rounds.iter().map(|r| r.bytes_up).sum(),
            bytes_down: rounds.iter().map(|r| r.bytes_down).sum(),
            seconds: rounds.iter().map(|r| r.seconds).sum(),
            round_seconds: rounds.iter().map(|r| r.seconds).sum(),
            clients: Vec::new(),
            variants: Vec::new(),
            diffusion: None,
            automl: None,
        }
    }

    /// Sets the job's wall time, from its submission at `created_ms` (Unix ms) until now: called
    /// as the job ends, once its end-of-job phase is done.
    pub fn ended(&mut self, created_ms: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.seconds = now.saturating_sub(created_ms) as f64 / 1000.0;
    }

    /// The human summary lines.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "summary  job {}  {} on {} with {}  {} rounds  {:.2} s ({:.2} s in rounds)  up {}  down {}",
            self.job_id,
            self.model,
            self.dataset,
            self.strategy,
            self.rounds,
            self.seconds,
            self.round_seconds,
            human_bytes(self.bytes_up),
            human_bytes(self.bytes_down)
        )];
        if let (Some(r), Some(a)) = (self.best_round, self.best_accuracy) {
            out.push(format!("  best round {r}  accuracy {a:.4}"));
        }
        if self.final_test_accuracy.is_some() || self.final_fed_accuracy.is_some() {
            out.push(format!(
                "  final test_acc {}  fed_acc {}",
                opt3(self.final_test_accuracy),
                opt3(self.final_fed_accuracy)
            ));
        }
        if let Some(c) = self.centralized_test_accuracy {
            out.push(format!(
                "  centralized baseline (same model, pooled train rows) test_acc {c:.3}"
            ));
        }
        if !self.clients.is_empty() {
            out.extend(client_table_lines(&self.clients));
        }
        if !self.variants.is_empty() {
            out.push(format!(
                "  {:<22}  {:>8}  {:>6}  {:>13}",
                "fusion variant", "features", "rounds", "test accuracy"
            ));
            for v in &self.variants {
                out.push(format!(
                    "  {:<22}  {:>8}  {:>6}  {:>13.3}",
                    v.variant, v.features, v.rounds, v.test_accuracy
                ));
            }
        }
        if let Some(d) = &self.diffusion {
            out.extend(d.lines());
        }
        if let Some(a) = &self.automl {
            out.extend(a.lines());
        }
        out
    }
}

impl DiffusionResult {
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "  diffusion  alpha_bar_T {:.2e}  held-out noise MSE {} -> {}",
            self.final_alpha_bar,
            opt3(self.first_noise_mse),
            opt3(self.last_noise_mse)
        )];
        if self.samples == 0 {
            out.push("  no signals generated (diffusion.samples = 0)".into());
            return out;
        }
        if let (Some(t), Some(u)) = (self.nearest_distance, self.untrained_nearest_distance) {
            out.push(format!(
                "  {} generated signals: distance to the nearest real signal {t:.3} (untrained network: {u:.3}, ratio {:.2})",
                self.samples,
                t / u
            ));
            if let Some(r) = self.real_nearest_distance {
                out.push(format!(
                    "  (real test signals lie {r:.3} from their nearest other real signal)"
                ));
            }
        } else {
            out.push(format!(
                "  {} generated signals (no test set to compare them with)",
                self.samples
            ));
        }
        for c in &self.coverage {
            out.push(format!(
                "  {:<10}  nearest for {:>4} of {} generated ({:.0}%)",
                c.band,
                c.nearest,
                self.samples,
                100.0 * c.share
            ));
        }
        out
    }
}

/// The per-client table: who the final global model serves badly.
pub fn client_table_lines(rows: &[ClientRow]) -> Vec<String> {
    let personal = rows.iter().any(|r| r.personalized_accuracy.is_some());
    let width = rows
        .iter()
        .map(|r| r.client.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut head = format!(
        "  {:<width$}  {:>8}  {:>7}  {:>8}",
        "client", "examples", "classes", "accuracy"
    );
    if personal {
        head.push_str("  personalized");
    }
    let mut out = vec![head];
    for r in rows {
        let mut line = format!(
            "  {:<width$}  {:>8}  {:>7}  {:>8.3}",
            r.client, r.examples, r.classes_present, r.accuracy
        );
        if let Some(p) = r.personalized_accuracy {
            line.push_str(&format!("  {p:>12.3}"));
        }
        out.push(line);
    }
    if let Some(worst) = rows.iter().min_by(|a, b| a.accuracy.total_cmp(&b.accuracy)) {
        out.push(format!(
            "  worst served: {} ({:.3}); spread {:.3}",
            worst.client,
            worst.accuracy,
            rows.iter().map(|r| r.accuracy).fold(f64::MIN, f64::max) - worst.accuracy
        ));
    }
    out
}

/// A job's run folder.
#[derive(Debug)]
pub struct RunFolder {
    dir: PathBuf,
    csv: File,
    jsonl: File,
    /// A write failed: the metric files miss rounds the state store holds, and are rewritten
    /// from it at the next chance ([`RunFolder::rewrite`]).
    pub stale: bool,
}

impl RunFolder {
    /// Creates `root/<job_id>/` with `spec.toml` and the metric files' headers.
    pub fn create(root: &Path, job_id: &str, spec_toml: &str) -> Result<Self> {
        let dir = root.join(job_id);
        let ctx = |what: &str| format!("cannot write {what} in run folder {}", dir.display());
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(ctx("the folder"), e))?;
        std::fs::write(dir.join("spec.toml"), spec_toml)
            .map_err(|e| Error::io(ctx("spec.toml"), e))?;
        // create_new: a second job with the same id must never truncate the first one's metrics.
        let mut csv = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(dir.join("metrics.csv"))
            .map_err(|e| Error::io(ctx("metrics.csv"), e))?;
        writeln!(csv, "{CSV_HEADER}").map_err(|e| Error::io(ctx("metrics.csv"), e))?;
        let jsonl = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(dir.join("metrics.jsonl"))
            .map_err(|e| Error::io(ctx("metrics.jsonl"), e))?;
        Ok(RunFolder {
            dir,
            csv,
            jsonl,
            stale: false,
        })
    }

    /// Opens an existing run folder again (a resumed job): the metric files are rewritten from
    /// the stored rounds, so each round appears exactly once whatever a crash left in them.
    pub fn reopen(dir: &Path, rounds: &[RoundRecord]) -> Result<Self> {
        let ctx = |what: &str| format!("cannot rewrite {what} in run folder {}", dir.display());
        std::fs::create_dir_all(dir).map_err(|e| Error::io(ctx("the folder"), e))?;
        let mut csv =
            File::create(dir.join("metrics.csv")).map_err(|e| Error::io(ctx("metrics.csv"), e))?;
        writeln!(csv, "{CSV_HEADER}").map_err(|e| Error::io(ctx("metrics.csv"), e))?;
        let jsonl = File::create(dir.join("metrics.jsonl"))
            .map_err(|e| Error::io(ctx("metrics.jsonl"), e))?;
        let mut run = RunFolder {
            dir: dir.to_path_buf(),
            csv,
            jsonl,
            stale: false,
        };
        for r in rounds {
            run.append(r)?;
        }
        Ok(run)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rewrites the metric files from `rounds` (all of the job's rounds, from the store) after a
    /// failed write; the folder is in step again when this succeeds.
    pub fn rewrite(&mut self, rounds: &[RoundRecord]) -> Result<()> {
        *self = RunFolder::reopen(&self.dir, rounds)?;
        Ok(())
    }

    /// Adds round `r`, which the store already holds: appended, or, after an earlier failed
    /// write, the metric files rewritten from every stored round (`stored`). A failure marks the
    /// folder stale (the next call rewrites it) and is returned for the log: it never loses a
    /// round, since the store has them all.
    pub fn add(
        &mut self,
        r: &RoundRecord,
        stored: impl FnOnce() -> Result<Vec<RoundRecord>>,
    ) -> Result<()> {
        let written = if self.stale {
            stored().and_then(|all| self.rewrite(&all))
        } else {
            self.append(r)
        };
        if written.is_err() {
            self.stale = true;
        }
        written
    }

    /// Appends one round to `metrics.csv` and `metrics.jsonl`.
    pub fn append(&mut self, r: &RoundRecord) -> Result<()> {
        let opt = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.6}"));
        let row = format!(
            "{},{},{:.6},{},{},{},{},{},{:.4}",
            r.round,
            r.clients,
            r.train_loss,
            opt(r.fed_loss),
            opt(r.fed_accuracy),
            opt(r.test_accuracy),
            r.bytes_up,
            r.bytes_down,
            r.seconds
        );
        let ctx = |f: &str| format!("cannot append to {}", self.dir.join(f).display());
        writeln!(self.csv, "{row}").map_err(|e| Error::io(ctx("metrics.csv"), e))?;
        let json = serde_json::to_string(r).unwrap_or_default();
        writeln!(self.jsonl, "{json}").map_err(|e| Error::io(ctx("metrics.jsonl"), e))?;
        Ok(())
    }

    /// Writes `clients.csv`: the end-of-job per-client table.
    pub fn write_client_table(&self, rows: &[ClientRow]) -> Result<()> {
        let mut text =
            String::from("client,examples,classes_present,accuracy,personalized_accuracy\n");
        for r in rows {
            text.push_str(&format!(
                "{},{},{},{:.6},{}\n",
                r.client,
                r.examples,
                r.classes_present,
                r.accuracy,
                r.personalized_accuracy
                    .map_or_else(String::new, |p| format!("{p:.6}"))
            ));
        }
        let path = self.dir.join("clients.csv");
        std::fs::write(&path, text)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
    }

    /// Writes the final model: a weights model's tensors as `model.safetensors` (the
    /// safetensors format, which numpy, PyTorch and the Hugging Face tools read), then
    /// `model.json`: `doc`, whose `global` names that file and lists the tensors' shapes (or
    /// holds the trees of a tree model).
    pub fn write_model(
        &self,
        doc: &serde_json::Value,
        weights: Option<&shoal_shared::tensor::Weights>,
    ) -> Result<()> {
        if let Some(w) = weights {
            let bytes = w.to_safetensors().map_err(|e| {
                Error::Job(format!(
                    "cannot encode {}: {e}",
                    shoal_shared::models::sgd::MODEL_FILE
                ))
            })?;
            let path = self.dir.join(shoal_shared::models::sgd::MODEL_FILE);
            std::fs::write(&path, bytes)
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        }
        self.write_json("model.json", doc)
    }

    /// Writes a JSON document into the folder.
    pub fn write_json(&self, name: &str, value: &impl Serialize) -> Result<()> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Error::Job(format!("cannot encode {name}: {e}")))?;
        std::fs::write(self.dir.join(name), text)
            .map_err(|e| Error::io(format!("cannot write {}", self.dir.join(name).display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// S10 #4: a full `--out` at round 164 of 200 failed the job for good, although the store
    /// held every round. A failed write now marks the folder stale, and the next round rewrites
    /// it from the store, every round once.
    #[test]
    fn a_run_folder_that_cannot_be_written_is_rewritten_from_the_store_later() {
        let root = tempfile::tempdir().unwrap();
        let mut run = RunFolder::create(root.path(), "job", "kind = \"train\"").unwrap();
        let all: Vec<RoundRecord> = (1..=3).map(|r| rec(r, Some(0.5))).collect();
        run.add(&all[0], || unreachable!("not stale")).unwrap();
        // The disk is full: writes fail with ENOSPC.
        run.csv = OpenOptions::new().write(true).open("/dev/full").unwrap();
        assert!(run.add(&all[1], || unreachable!("not stale yet")).is_err());
        assert!(run.stale);
        // Space is back: the next round rewrites the folder from the store's rounds.
        run.add(&all[2], || Ok(all.clone())).unwrap();
        assert!(!run.stale);
        let csv = std::fs::read_to_string(root.path().join("job/metrics.csv")).unwrap();
        let rounds: Vec<&str> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap())
            .collect();
        assert_eq!(rounds, ["1", "2", "3"]);
        let jsonl = std::fs::read_to_string(root.path().join("job/metrics.jsonl")).unwrap();
        assert_eq!(jsonl.lines().count(), 3);
    }

    fn rec(round: u32, test: Option<f64>) -> RoundRecord {
        RoundRecord {
            staleness: None,
            round,
            rounds_total: 3,
            clients: 10,
            clients_selected: 10,
            train_loss: 0.2314,
            fed_loss: Some(0.3),
            fed_accuracy: Some(0.9312),
            test_accuracy: test,
            test_loss: None,
            bytes_up: 1_234_567,
            bytes_down: 1_200_000,
            seconds: 0.04,
            rejected: 0,
            rejected_by: Default::default(),
            late_by: Default::default(),
            quarantined: Vec::new(),
            silenced: Vec::new(),
        }
    }

    #[test]
    fn round_line_reads_as_documented() {
        assert_eq!(
            round_line(&rec(7, Some(0.938))),
            "round 7/3  clients 10/10  train_loss 0.231  fed_acc 0.931  test_acc 0.938  up 1.2 MB  down 1.2 MB  0.04 s"
        );
        assert!(round_line(&rec(1, None)).contains("test_acc -"));
        let mut r = rec(2, None);
        r.rejected = 3;
        r.rejected_by = [("a".to_string(), 2), ("b".to_string(), 1)].into();
        r.late_by = [("a".to_string(), 1)].into();
        r.quarantined = vec!["b".into()];
        assert!(
            round_line(&r).ends_with("  rejected 3 (a: 2, 1 late, b: 1)  quarantined b"),
            "{}",
            round_line(&r)
        );
    }

    #[test]
    fn run_folder_writes_header_and_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = RunFolder::create(tmp.path(), "j1", "kind = \"train\"").unwrap();
        f.append(&rec(1, Some(0.5))).unwrap();
        f.append(&rec(2, None)).unwrap();
        let csv = std::fs::read_to_string(tmp.path().join("j1/metrics.csv")).unwrap();
        let lines: Vec<_> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].split(',').count(), 9);
        assert!(
            lines[2].contains(",,"),
            "missing test accuracy is an empty cell"
        );
        let jsonl = std::fs::read_to_string(tmp.path().join("j1/metrics.jsonl")).unwrap();
        assert_eq!(jsonl.lines().count(), 2);
    }

    #[test]
    fn summary_picks_the_best_round() {
        let spec = crate::spec::CheckedSpec::from_toml("kind = \"train\"").unwrap();
        let s = Summary::from_rounds(
            "j",
            &spec,
            &[rec(1, Some(0.5)), rec(2, Some(0.8)), rec(3, Some(0.7))],
        );
        assert_eq!((s.best_round, s.best_accuracy), (Some(2), Some(0.8)));
        assert_eq!(s.final_test_accuracy, Some(0.7));
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(12_300), "12.3 kB");
        assert_eq!(human_bytes(1_250_000), "1.2 MB");
    }
}
