//! Job specs: TOML (or JSON) with defaults for everything but `kind`.
//!
//! ```toml
//! kind = "train"
//! dataset = "digits"
//! rounds = 10
//! ```
//! is a complete job; sections `[model]`, `[strategy]`, `[clients]`, `[local]`, `[evaluation]` hold
//! the rest. Unknown fields are errors, so a typo never silently falls back to a default.

use serde::{Deserialize, Serialize};
use shoal_shared::model::{LocalConfig, ModelSpec};
use shoal_shared::strategy::StrategySpec;

use crate::error::{Error, Result};

/// A job as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// `train`, `fusion` or `diffusion` (automl is planned).
    pub kind: String,
    /// A built-in dataset (`digits`, `seed-fl`, `iris`, `winequality`) or the name under which clients
    /// registered their CSV (`--data NAME=FILE.csv`).
    #[serde(default = "default_dataset")]
    pub dataset: String,
    #[serde(default = "default_rounds")]
    pub rounds: u32,
    /// Seeds model initialisation, client sampling and every client's local shuffling.
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub model: ModelSpec,
    #[serde(default)]
    pub strategy: StrategySpec,
    #[serde(default)]
    pub clients: ClientPolicy,
    #[serde(default)]
    pub local: LocalConfig,
    #[serde(default)]
    pub evaluation: Evaluation,
    /// Diffusion jobs: what to generate after training (`[diffusion]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffusion: Option<DiffusionOptions>,
}

/// The `[diffusion]` section of a diffusion job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusionOptions {
    /// Signals generated from pure noise by the final model (and, as a reference, by the
    /// untrained one); 0 trains without generating.
    pub samples: u32,
}

impl Default for DiffusionOptions {
    fn default() -> Self {
        DiffusionOptions { samples: 90 }
    }
}

/// Most signals a diffusion job generates.
pub const MAX_DIFFUSION_SAMPLES: u32 = 10_000;

fn default_dataset() -> String {
    "digits".into()
}
fn default_rounds() -> u32 {
    10
}
fn default_seed() -> u64 {
    42
}

/// Client selection and round timing (the job's `[clients]` section). Names follow Flower's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientPolicy {
    /// Fraction of available clients asked to train each round.
    pub fraction_fit: f64,
    /// Fraction of available clients asked to evaluate each round.
    pub fraction_evaluate: f64,
    /// Fewest clients asked to train; also the quorum of results a round needs.
    pub min_fit_clients: u32,
    /// Fewest clients asked to evaluate.
    pub min_evaluate_clients: u32,
    /// A round starts only when this many clients holding the dataset are connected.
    pub min_available_clients: u32,
    /// How long a round waits for the available clients before the job fails.
    pub wait_for_clients_secs: f64,
    /// Once the quorum has answered, how long to wait for the rest.
    pub wait_after_quorum_secs: f64,
    /// Hard limit on a round's training (and again on its evaluation) phase.
    pub round_timeout_secs: f64,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        ClientPolicy {
            fraction_fit: 1.0,
            fraction_evaluate: 1.0,
            min_fit_clients: 2,
            min_evaluate_clients: 2,
            min_available_clients: 2,
            wait_for_clients_secs: 300.0,
            wait_after_quorum_secs: 10.0,
            round_timeout_secs: 120.0,
        }
    }
}

/// Evaluation settings (the job's `[evaluation]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Evaluation {
    /// Federated evaluation every this many rounds (and always after the last round).
    pub every: u32,
    /// A CSV on the coordinator's machine used as centralized test set (built-in datasets have
    /// their own holdout and need none).
    pub holdout: Option<String>,
    /// Label column of `holdout` (default: the last column).
    pub label_column: Option<String>,
    /// For built-in datasets, also train the same model centrally on the pooled train rows and
    /// report its test accuracy in the summary.
    pub centralized_baseline: bool,
    /// In the end-of-job per-client table, also report each client's accuracy after this many
    /// local epochs from the final global model (personalisation); 0 = no.
    pub personalize_epochs: u32,
}

impl Default for Evaluation {
    fn default() -> Self {
        Evaluation {
            every: 1,
            holdout: None,
            label_column: None,
            centralized_baseline: true,
            personalize_epochs: 0,
        }
    }
}

/// Upper bounds that keep a spec from asking for the impossible (a billion rounds, a wait of
/// centuries).
pub const MAX_ROUNDS: u32 = 1_000_000;
pub const MAX_WAIT_SECS: f64 = 30.0 * 24.0 * 3600.0;

/// Kinds still to come.
const KINDS_PLANNED: [&str; 1] = ["automl"];
/// Kinds this version runs, for error messages.
const KINDS: &str = "\"train\", \"fusion\" or \"diffusion\"";

impl JobSpec {
    /// Parses a TOML spec and checks it.
    pub fn from_toml(text: &str) -> Result<Self> {
        let spec: JobSpec = toml::from_str(text).map_err(|e| {
            Error::InvalidSpec(e.to_string().trim().replace('\n', " ").replace("  ", " "))
        })?;
        spec.check()?;
        Ok(spec)
    }

    /// Parses a JSON spec and checks it.
    pub fn from_json(text: &str) -> Result<Self> {
        let spec: JobSpec =
            serde_json::from_str(text).map_err(|e| Error::InvalidSpec(e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }

    /// The normalised spec, every default written out.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# spec could not be rendered: {e}\n"))
    }

    /// Rejects specs no run can satisfy, naming the field.
    pub fn check(&self) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::InvalidSpec(format!("`{field}` {msg}")));
        if self.model.denoiser().is_some() && self.kind != "diffusion" {
            return bad(
                "model",
                format!(
                    "= \"denoiser\" belongs to diffusion jobs, not to kind = \"{}\"",
                    self.kind
                ),
            );
        }
        if self.diffusion.is_some() && self.kind != "diffusion" {
            return bad(
                "diffusion",
                format!(
                    "section is for diffusion jobs, not for kind = \"{}\"",
                    self.kind
                ),
            );
        }
        match self.kind.as_str() {
            "train" => {}
            "diffusion" => {
                let Some(d) = self.model.denoiser() else {
                    return bad(
                        "model",
                        "of a diffusion job must be the noise-prediction network: [model] kind = \"denoiser\"".into(),
                    );
                };
                if self.strategy.uses_control_variates()
                    || matches!(self.strategy, StrategySpec::FedProx { .. })
                    || self.local.proximal_mu != 0.0
                {
                    return bad(
                        "strategy",
                        "of a diffusion job cannot be scaffold or fedprox, nor set local.proximal_mu (the denoiser trains its own objective)".into(),
                    );
                }
                let samples = self.diffusion_options().samples;
                if samples > MAX_DIFFUSION_SAMPLES {
                    return bad(
                        "diffusion.samples",
                        format!("must be at most {MAX_DIFFUSION_SAMPLES}, found {samples}"),
                    );
                }
                if samples > 0 {
                    let sched = d
                        .noise_schedule()
                        .map_err(|e| Error::InvalidSpec(e.to_string()))?;
                    if let Err(e) = sched.check_generation() {
                        return Err(Error::InvalidSpec(format!(
                            "{e} (or set diffusion.samples = 0 to train without generating)"
                        )));
                    }
                }
            }
            "fusion" => {
                if self.model != ModelSpec::Logreg {
                    return bad(
                        "model",
                        "of a fusion job must be logreg (each variant, and the stacking of learned late fusion, is a logistic regression)".into(),
                    );
                }
                if self.strategy.uses_control_variates() {
                    return bad(
                        "strategy",
                        "= \"scaffold\" is not available for fusion (its client state would carry over between variants of different widths)".into(),
                    );
                }
            }
            k if KINDS_PLANNED.contains(&k) => {
                return bad(
                    "kind",
                    format!("= \"{k}\" is not available yet in this version ({KINDS} are)"),
                )
            }
            k => return bad("kind", format!("= \"{k}\" is unknown (expected {KINDS})")),
        }
        if self.dataset.trim().is_empty() {
            return bad("dataset", "must name a dataset".into());
        }
        if !(1..=MAX_ROUNDS).contains(&self.rounds) {
            return bad("rounds", format!("must be between 1 and {MAX_ROUNDS}"));
        }
        let c = &self.clients;
        for (name, v) in [
            ("clients.fraction_fit", c.fraction_fit),
            ("clients.fraction_evaluate", c.fraction_evaluate),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return bad(name, format!("must be in (0, 1], found {v}"));
            }
        }
        for (name, v) in [
            ("clients.min_fit_clients", c.min_fit_clients),
            ("clients.min_evaluate_clients", c.min_evaluate_clients),
            ("clients.min_available_clients", c.min_available_clients),
        ] {
            if v == 0 {
                return bad(name, "must be at least 1".into());
            }
        }
        if c.min_available_clients < c.min_fit_clients {
            return bad(
                "clients.min_available_clients",
                format!(
                    "({}) must be at least clients.min_fit_clients ({})",
                    c.min_available_clients, c.min_fit_clients
                ),
            );
        }
        for (name, v) in [
            ("clients.wait_for_clients_secs", c.wait_for_clients_secs),
            ("clients.wait_after_quorum_secs", c.wait_after_quorum_secs),
            ("clients.round_timeout_secs", c.round_timeout_secs),
        ] {
            if !(v.is_finite() && (0.0..=MAX_WAIT_SECS).contains(&v)) {
                return bad(
                    name,
                    format!("must be a number of seconds between 0 and {MAX_WAIT_SECS}, found {v}"),
                );
            }
        }
        if c.round_timeout_secs == 0.0 {
            return bad("clients.round_timeout_secs", "must be positive".into());
        }
        if self.evaluation.every == 0 {
            return bad("evaluation.every", "must be at least 1".into());
        }
        let core = |e: shoal_shared::Error| Error::InvalidSpec(e.to_string());
        self.local.check().map_err(core)?;
        self.model.check().map_err(core)?;
        self.strategy.check().map_err(core)?;
        if matches!(self.strategy, StrategySpec::FedProx { .. }) && self.local.proximal_mu != 0.0 {
            return bad(
                "local.proximal_mu",
                "is for other strategies; with fedprox set `proximal_mu` in [strategy]".into(),
            );
        }
        if (self.model.forest().is_some() || self.model.gbdt().is_some())
            && self.strategy != StrategySpec::FedAvg
        {
            return bad(
                "strategy",
                format!(
                    "= \"{}\" does not apply to trees (they are pooled or grown from summed histograms, not averaged); leave it at fedavg",
                    self.strategy.name()
                ),
            );
        }
        if self.evaluation.personalize_epochs > 1000 {
            return bad(
                "evaluation.personalize_epochs",
                "must be at most 1000".into(),
            );
        }
        Ok(())
    }

    /// The `[diffusion]` section, defaults filled in.
    pub fn diffusion_options(&self) -> DiffusionOptions {
        self.diffusion.clone().unwrap_or_default()
    }

    /// How updates are combined, for headers and summaries: the strategy, or tree pooling for a
    /// forest (which has no strategy).
    pub fn aggregation_label(&self) -> &'static str {
        if self.model.forest().is_some() {
            "pooled trees"
        } else if self.model.gbdt().is_some() {
            "summed histograms"
        } else {
            self.strategy.name()
        }
    }

    /// FedProx's mu for this job's clients: the strategy's with `fedprox`, else `[local]`'s.
    pub fn proximal_mu(&self) -> f64 {
        match self.strategy {
            StrategySpec::FedProx { proximal_mu } => proximal_mu,
            _ => self.local.proximal_mu,
        }
    }

    /// The clients' learning rate in round `round`: the FedOpt family's `eta_l` when set, else
    /// `[local] lr`, decayed by `lr_decay` per round.
    pub fn local_lr(&self, round: u32) -> f64 {
        LocalConfig {
            lr: self.strategy.local_lr().unwrap_or(self.local.lr),
            ..self.local.clone()
        }
        .lr_at(round)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_spec_gets_defaults() {
        let s =
            JobSpec::from_toml("kind = \"train\"\ndataset = \"digits\"\nrounds = 10\n").unwrap();
        assert_eq!(s.rounds, 10);
        assert_eq!(s.model, ModelSpec::Logreg);
        assert_eq!(s.clients.min_fit_clients, 2);
        // The normalised form parses back to the same spec.
        assert_eq!(JobSpec::from_toml(&s.to_toml()).unwrap(), s);
    }

    #[test]
    fn sections_override_defaults() {
        let s = JobSpec::from_toml(
            "kind = \"train\"\n[local]\nepochs = 3\nlr = 0.05\n[clients]\nfraction_fit = 0.5\n",
        )
        .unwrap();
        assert_eq!(s.local.epochs, 3);
        assert_eq!(s.local.batch_size, LocalConfig::default().batch_size);
        assert_eq!(s.clients.fraction_fit, 0.5);
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases = [
            ("dataset = \"digits\"", "kind"),
            ("kind = \"train\"\nrounds = 0", "rounds"),
            ("kind = \"train\"\nrounds = 4294967295", "rounds"),
            (
                "kind = \"train\"\n[clients]\nround_timeout_secs = 1e17",
                "round_timeout_secs",
            ),
            ("kind = \"train\"\nroundz = 3", "roundz"),
            ("kind = \"automl\"", "not available yet"),
            ("kind = \"diffusion\"", "kind = \"denoiser\""),
            (
                "kind = \"train\"\n[model]\nkind = \"denoiser\"",
                "belongs to diffusion jobs",
            ),
            (
                "kind = \"diffusion\"\n[model]\nkind = \"denoiser\"\nsteps = 50\nschedule = { kind = \"linear\", beta_start = 1e-4, beta_end = 0.02 }",
                "ᾱ_T = 0.603",
            ),
            (
                "kind = \"diffusion\"\n[model]\nkind = \"denoiser\"\n[strategy]\nname = \"scaffold\"",
                "cannot be scaffold",
            ),
            (
                "kind = \"train\"\n[diffusion]\nsamples = 3",
                "section is for diffusion jobs",
            ),
            (
                "kind = \"fusion\"\n[model]\nkind = \"mlp\"",
                "must be logreg",
            ),
            (
                "kind = \"fusion\"\n[strategy]\nname = \"scaffold\"",
                "not available for fusion",
            ),
            (
                "kind = \"train\"\n[clients]\nfraction_fit = 1.5",
                "fraction_fit",
            ),
            ("kind = \"train\"\n[local]\nlr = -1.0", "lr"),
            ("kind = \"train\"\n[model]\nkind = \"resnet\"", "resnet"),
            (
                "kind = \"train\"\n[model]\nkind = \"forest\"\n[strategy]\nname = \"fedadam\"",
                "does not apply to trees",
            ),
            (
                "kind = \"train\"\n[model]\nkind = \"forest\"\ntrees_per_round = 0",
                "trees_per_round",
            ),
            ("kind = \"train\"\nrounds = \"ten\"", "rounds"),
        ];
        for (text, needle) in cases {
            let err = JobSpec::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn strategy_and_model_sections_parse_with_defaults() {
        let s = JobSpec::from_toml(
            "kind = \"train\"\n[model]\nkind = \"mlp\"\nhidden = [32, 16]\n[strategy]\nname = \"fedadam\"\neta = 0.05\n",
        )
        .unwrap();
        assert_eq!(s.model.label(), "mlp(32,16)");
        assert_eq!(s.strategy.name(), "fedadam");
        let prox =
            JobSpec::from_toml("kind = \"train\"\n[strategy]\nname = \"fedprox\"\n").unwrap();
        assert_eq!(prox.proximal_mu(), 0.01);
        let clash =
            "kind = \"train\"\n[strategy]\nname = \"fedprox\"\n[local]\nproximal_mu = 0.5\n";
        assert!(JobSpec::from_toml(clash)
            .unwrap_err()
            .to_string()
            .contains("proximal_mu"));
        let eta_l = "kind = \"train\"\n[strategy]\nname = \"fedyogi\"\neta_l = 0.03\n[local]\nlr_decay = 0.5\n";
        let s = JobSpec::from_toml(eta_l).unwrap();
        assert!((s.local_lr(1) - 0.03).abs() < 1e-12 && (s.local_lr(2) - 0.015).abs() < 1e-12);
        let bad = "kind = \"train\"\n[strategy]\nname = \"fedtrimmedavg\"\nbeta = 0.7\n";
        assert!(JobSpec::from_toml(bad)
            .unwrap_err()
            .to_string()
            .contains("beta"));
    }

    #[test]
    fn json_is_accepted() {
        let s = JobSpec::from_json(r#"{"kind":"train","rounds":3}"#).unwrap();
        assert_eq!(s.rounds, 3);
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The job files shipped in `examples/` stay valid.
    #[test]
    fn shipped_examples_parse() {
        let full = JobSpec::from_toml(include_str!("../../examples/digits.toml")).unwrap();
        assert_eq!(full.rounds, 30);
        assert_eq!(
            full.local,
            LocalConfig::default(),
            "digits.toml documents the defaults"
        );
        let csv = JobSpec::from_toml(include_str!("../../examples/csv-quickstart.toml")).unwrap();
        assert_eq!(csv.evaluation.holdout.as_deref(), Some("shards/test.csv"));
        let fusion = JobSpec::from_toml(include_str!("../../examples/fusion.toml")).unwrap();
        assert_eq!(fusion.kind, "fusion");
        let diffusion = JobSpec::from_toml(include_str!("../../examples/diffusion.toml")).unwrap();
        assert_eq!(
            diffusion.model.denoiser(),
            Some(&shoal_shared::diffusion::DenoiserSpec::default()),
            "diffusion.toml documents the defaults"
        );
        assert_eq!(diffusion.diffusion_options().samples, 90);
        let forest = JobSpec::from_toml(include_str!("../../examples/forest.toml")).unwrap();
        assert_eq!(forest.model.forest().map(|p| p.trees_per_round), Some(5));
    }
}
