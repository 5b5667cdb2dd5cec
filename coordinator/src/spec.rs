//! Job specs: TOML (or JSON) with defaults for everything but `kind`.
//!
//! ```toml
//! kind = "train"
//! dataset = "digits"
//! rounds = 10
//! ```
//! is a complete job; sections `[model]`, `[strategy]`, `[clients]`, `[local]`, `[evaluation]` hold
//! the rest. Unknown fields are errors, so a typo never silently falls back to a default.
//!
//! Two types, linfa's `ParamGuard` idea: a [`JobSpec`] is a spec as written (parsed, editable,
//! unchecked); [`JobSpec::check`] turns it into a [`CheckedSpec`], which carries the job's
//! [`JobKind`] with that kind's settings taken out of the spec. Everything past submission (the
//! Jobs service, the job kinds, resume) takes a `CheckedSpec`, so it never checks a spec again.

use serde::{Deserialize, Serialize};
use shoal_shared::automl::{Config, Domain, SearchAlgorithm, SearchSpace, Tpe, Value};
use shoal_shared::compress::Compression;
use shoal_shared::data::builtin::Builtin;
use shoal_shared::models::sgd::LocalConfig;
use shoal_shared::models::ModelSpec;
use shoal_shared::strategy::StrategySpec;

use crate::error::{Error, Result};
use crate::jobs::JobKind;

/// A job spec that passed [`JobSpec::check`]: the only form of a spec the coordinator runs. It
/// reads like the spec it came from (`Deref`) but cannot change; a changed spec is a [`JobSpec`]
/// again ([`CheckedSpec::into_spec`]) and is checked again.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedSpec {
    spec: JobSpec,
    // Not `kind`: that name reads the spec's own `kind` field through `Deref`.
    job_kind: JobKind,
}

impl CheckedSpec {
    /// Parses a TOML spec and checks it.
    pub fn from_toml(text: &str) -> Result<Self> {
        JobSpec::parse_toml(text)?.check()
    }

    /// Parses a JSON spec and checks it.
    pub fn from_json(text: &str) -> Result<Self> {
        JobSpec::parse_json(text)?.check()
    }

    /// What the job does, with the settings of its kind.
    pub fn kind(&self) -> &JobKind {
        &self.job_kind
    }

    /// The spec as written, to be changed and checked again.
    pub fn into_spec(self) -> JobSpec {
        self.spec
    }

    /// This spec with `rounds` rounds (an AutoML trial's budget). The round count is checked
    /// only against its own range, so only that range is checked here.
    pub fn with_rounds(mut self, rounds: u32) -> Result<CheckedSpec> {
        if !(1..=MAX_ROUNDS).contains(&rounds) {
            return Err(Error::InvalidSpec(format!(
                "`rounds` must be between 1 and {MAX_ROUNDS}"
            )));
        }
        self.spec.rounds = rounds;
        Ok(self)
    }
}

impl std::ops::Deref for CheckedSpec {
    type Target = JobSpec;

    fn deref(&self) -> &JobSpec {
        &self.spec
    }
}

/// A job as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// `train`, `fusion`, `diffusion` or `automl`.
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
    /// The job's classes, for a dataset the clients registered: fixed here, no client's Hello
    /// can add one (clients holding other classes are left out). Without it the holdout's
    /// classes are the job's, and without a holdout those of the clients at job start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// What the coordinator accepts from clients: an update norm bound and quarantine.
    #[serde(default)]
    pub updates: UpdatePolicy,
    /// Diffusion jobs: what to generate after training (`[diffusion]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffusion: Option<DiffusionOptions>,
    /// AutoML jobs: the search over overrides of this spec (`[automl]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automl: Option<AutomlOptions>,
    /// Train jobs of weights models: buffered asynchronous aggregation instead of rounds
    /// (`[async]`, FedBuff).
    #[serde(rename = "async", default, skip_serializing_if = "Option::is_none")]
    pub asynchronous: Option<AsyncOptions>,
}

/// The `[async]` section: buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022). The
/// coordinator keeps `concurrency` clients training, each from the global model of the moment,
/// and steps the model every `buffer_size` updates; the job's `rounds` count these steps. No step
/// waits for the slowest client, so which updates share a step depends on arrival times and a
/// run is not reproducible bit for bit (a synchronous run is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AsyncOptions {
    /// Clients training at once (K); at most the clients available.
    pub concurrency: u32,
    /// Updates per server step (B), at most `concurrency`: a client has at most one update in
    /// a step, and is sent its next task after the step it contributed to.
    pub buffer_size: u32,
    /// How an update counts by the steps since the model it started from: "polynomial"
    /// (`(1 + τ)^-staleness_exponent`) or "constant".
    pub staleness: String,
    pub staleness_exponent: f64,
    /// An update from a model more than this many steps old is refused as late (not a strike).
    pub max_staleness: u32,
}

impl Default for AsyncOptions {
    fn default() -> Self {
        AsyncOptions {
            concurrency: 10,
            buffer_size: 5,
            staleness: "polynomial".into(),
            staleness_exponent: 0.5,
            max_staleness: 20,
        }
    }
}

/// The `[automl]` section: how to search, and over what. Every other section of the job is the
/// base `train` job the trials override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutomlOptions {
    /// `grid`, `random`, `halving` (successive halving, rounds as the budget) or `tpe`.
    pub search: SearchAlgorithm,
    /// Configurations tried by random search and TPE; the configurations successive halving
    /// starts with. Grid search tries every combination and ignores it.
    pub trials: u32,
    /// Trials run at once (clients serve the tasks of several trials concurrently).
    pub parallel_trials: u32,
    /// Successive halving keeps the best 1/eta of each rung and gives them eta times the rounds.
    pub eta: u32,
    pub tpe: Tpe,
    /// Parameter → values (a list) or range (`{ low, high, log, integer }`). Names are dotted
    /// paths into the job spec (`"model.max_depth"`, `"local.lr"`, `"strategy.eta"`); the value
    /// `"none"` removes the field so its default applies. `trees_total` sizes a forest: it sets
    /// `model.max_trees` to the value and `model.trees_per_round` so that
    /// `clients.min_available_clients` clients reach it in `rounds` rounds.
    pub space: SearchSpace,
}

impl Default for AutomlOptions {
    fn default() -> Self {
        AutomlOptions {
            search: SearchAlgorithm::Grid,
            trials: 20,
            parallel_trials: 1,
            eta: 3,
            tpe: Tpe::default(),
            space: SearchSpace::default(),
        }
    }
}

/// Limits on an AutoML search.
pub const MAX_TRIALS: u32 = 1000;
pub const MAX_PARALLEL_TRIALS: u32 = 16;
/// The AutoML parameter that sizes a forest (see [`AutomlOptions::space`]).
pub const TREES_TOTAL: &str = "trees_total";

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
    /// Over-selection (weights models): ask this many times the clients a round needs and close
    /// its training phase as soon as the needed number of updates has arrived. 1 = off. Which
    /// clients make it in then depends on who is fastest, so a run is no longer bit-reproducible.
    pub over_selection: f64,
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
            over_selection: 1.0,
        }
    }
}

/// What a bounded update does beyond the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NormAction {
    /// Refuse the update (it counts against the client).
    #[default]
    Reject,
    /// Scale the update down to the bound and accept it.
    Clip,
}

/// Checks on clients' updates beyond shape and finiteness (the job's `[updates]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdatePolicy {
    /// Bound on an update's L2 distance from the global model it started from (weights models);
    /// none by default.
    pub max_norm: Option<f64>,
    /// What happens to an update beyond `max_norm`: reject or clip.
    pub on_norm: NormAction,
    /// A client's example count weighs at most this many times the median count of the round's
    /// accepted updates (its Hello only bounds what it may report); 0 = no cap.
    pub weight_cap: f64,
    /// An update farther from the global model than this many times the median distance of the
    /// round's accepted updates is scaled back to that distance (weights models); 0 = off.
    pub adaptive_norm: f64,
    /// An update farther than this many times the round's median distance is refused, which
    /// counts towards quarantine (weights models); 0 = off.
    pub adaptive_refuse: f64,
    /// A client with this many refused results in the job is left out of it for the rest of
    /// the job (quarantined); 0 = never.
    pub quarantine_after: u32,
    /// How clients send their updates (weights models): "none" (f32), "f16", "bf16", "int8"
    /// (unbiased stochastic, blocks of 256) or "topk" (the largest `topk_fraction` of each
    /// tensor's changes, the rest kept by the client for its next update).
    pub compression: String,
    /// With `compression = "topk"`: the share of each tensor's values sent, in (0, 1].
    pub topk_fraction: f64,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy {
            max_norm: None,
            on_norm: NormAction::Reject,
            weight_cap: DEFAULT_WEIGHT_CAP,
            adaptive_norm: DEFAULT_ADAPTIVE_NORM,
            adaptive_refuse: DEFAULT_ADAPTIVE_REFUSE,
            quarantine_after: 3,
            compression: "none".into(),
            topk_fraction: DEFAULT_TOPK_FRACTION,
        }
    }
}

/// Most clients an `[async]` job keeps training at once.
pub const MAX_ASYNC_CONCURRENCY: u32 = 100_000;

/// Default `updates.topk_fraction`: 1% of each tensor's values (with error feedback, digits'
/// MLP loses under a point of accuracy at this share; docs/guide/scale.md).
pub const DEFAULT_TOPK_FRACTION: f64 = 0.01;

/// Default `updates.weight_cap`: Dirichlet(0.5) shards of the built-in datasets over 3 to 10
/// clients stay under it (largest ratio to the median measured: 3.0), while a client that claims
/// 2^64 examples counts as three median clients (docs/SECURITY.md).
pub const DEFAULT_WEIGHT_CAP: f64 = 3.0;

/// Default `updates.adaptive_norm`: honest updates of the seeded examples stay under it (see
/// the notes on `[updates]` in docs/SECURITY.md), while a finite update of any size moves the
/// model at most this many median steps.
pub const DEFAULT_ADAPTIVE_NORM: f64 = 3.0;

/// Default `updates.adaptive_refuse`: over three times the largest ratio to the median an honest
/// update reached in the seeded examples (5.7, docs/SECURITY.md), so it strikes only peers that
/// are broken or hostile.
pub const DEFAULT_ADAPTIVE_REFUSE: f64 = 20.0;

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

/// Most classes a spec may declare.
pub const MAX_CLASSES: usize = 10_000;

/// Upper bounds that keep a spec from asking for the impossible (a billion rounds, a wait of
/// centuries).
pub const MAX_ROUNDS: u32 = 1_000_000;
pub const MAX_WAIT_SECS: f64 = 30.0 * 24.0 * 3600.0;

impl JobSpec {
    /// Parses a TOML spec without checking it (see [`CheckedSpec::from_toml`]).
    pub fn parse_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            Error::InvalidSpec(e.to_string().trim().replace('\n', " ").replace("  ", " "))
        })
    }

    /// Parses a JSON spec without checking it (see [`CheckedSpec::from_json`]).
    pub fn parse_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::InvalidSpec(e.to_string()))
    }

    /// The normalised spec, every default written out.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# spec could not be rendered: {e}\n"))
    }

    /// Rejects specs no run can satisfy, naming the field; a spec that passes becomes the
    /// [`CheckedSpec`] a job runs.
    pub fn check(self) -> Result<CheckedSpec> {
        let bad = |field: &str, msg: String| Err(Error::InvalidSpec(format!("`{field}` {msg}")));
        if let Some(m) = self.updates.max_norm {
            if !(m.is_finite() && m > 0.0) {
                return bad(
                    "updates.max_norm",
                    format!("= {m}: give a positive number (or leave it out for no bound)"),
                );
            }
        }
        let compression = Compression::parse(&self.updates.compression, self.updates.topk_fraction)
            .map_err(|e| Error::InvalidSpec(e.to_string()))?;
        if compression != Compression::None
            && (self.model.forest().is_some() || self.model.gbdt().is_some())
        {
            return bad(
                "updates.compression",
                format!(
                    "= \"{}\" compresses weight updates; a {} model sends trees (leave it out)",
                    compression.name(),
                    self.model.name()
                ),
            );
        }
        if let Some(classes) = &self.classes {
            if self.dataset.parse::<Builtin>().is_ok() {
                return bad(
                    "classes",
                    format!(
                        "is for datasets the clients registered; built-in `{}` has its own",
                        self.dataset
                    ),
                );
            }
            let mut seen = std::collections::BTreeSet::new();
            if classes.is_empty() || classes.len() > MAX_CLASSES {
                return bad(
                    "classes",
                    format!("lists {} classes: give 1 to {MAX_CLASSES}", classes.len()),
                );
            }
            if let Some(c) = classes
                .iter()
                .find(|c| c.is_empty() || c.chars().count() > 200 || !seen.insert(c.as_str()))
            {
                return bad(
                    "classes",
                    format!(
                        "has {:?}: each class once, 1 to 200 characters",
                        shoal_shared::text::clip(c, 40)
                    ),
                );
            }
        }
        for (field, v) in [
            ("updates.weight_cap", self.updates.weight_cap),
            ("updates.adaptive_norm", self.updates.adaptive_norm),
            ("updates.adaptive_refuse", self.updates.adaptive_refuse),
        ] {
            if !(v.is_finite() && (v == 0.0 || v >= 1.0)) {
                return bad(
                    field,
                    format!("= {v}: give a multiple of the round's median of at least 1, or 0 to turn it off"),
                );
            }
        }
        if self.model.denoiser().is_some() && self.kind != "diffusion" {
            return bad(
                "model",
                format!(
                    "= \"denoiser\" belongs to diffusion jobs, not to kind = \"{}\"",
                    self.kind
                ),
            );
        }
        if self.automl.is_some() && self.kind != "automl" {
            return bad(
                "automl",
                format!(
                    "section is for automl jobs, not for kind = \"{}\"",
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
        let kind = match self.kind.as_str() {
            "train" => JobKind::Train,
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
                JobKind::Diffusion {
                    denoiser: d.clone(),
                    samples,
                }
            }
            "fusion" => {
                if !matches!(self.model, ModelSpec::Logreg(_)) {
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
                JobKind::Fusion
            }
            "automl" => JobKind::Automl(self.check_automl()?),
            k => {
                return bad(
                    "kind",
                    format!("= \"{k}\" is unknown (expected {})", JobKind::NAMES),
                )
            }
        };
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
        if !(c.over_selection.is_finite() && (1.0..=4.0).contains(&c.over_selection)) {
            return bad(
                "clients.over_selection",
                format!("must be between 1 (off) and 4, found {}", c.over_selection),
            );
        }
        if c.over_selection > 1.0 && (self.model.forest().is_some() || self.model.gbdt().is_some())
        {
            return bad(
                "clients.over_selection",
                "applies to weights models; a forest or boosting round uses every selected client"
                    .into(),
            );
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
        if self.model.external().is_some() && self.strategy.uses_control_variates() {
            return bad(
                "strategy",
                "= \"scaffold\" needs clients to return control variates, which external trainers do not; choose another strategy".into(),
            );
        }
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
        if let Some(a) = &self.asynchronous {
            self.check_async(a)?;
        }
        if self.evaluation.personalize_epochs > 1000 {
            return bad(
                "evaluation.personalize_epochs",
                "must be at most 1000".into(),
            );
        }
        Ok(CheckedSpec {
            spec: self,
            job_kind: kind,
        })
    }

    /// Checks an `[async]` section: FedBuff steps a weights model that every client trains from
    /// the global model, one update per client per step.
    fn check_async(&self, a: &AsyncOptions) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::InvalidSpec(format!("`{field}` {msg}")));
        if self.kind != "train" {
            return bad(
                "async",
                format!(
                    "is for train jobs, not for kind = \"{}\" (leave the section out)",
                    self.kind
                ),
            );
        }
        if self.model.forest().is_some() || self.model.gbdt().is_some() {
            return bad(
                "async",
                format!(
                    "steps a weights model from buffered updates; a {} model's rounds grow trees (leave the section out)",
                    self.model.name()
                ),
            );
        }
        if self.strategy.uses_control_variates() {
            return bad(
                "async",
                "does not work with strategy = \"scaffold\": its control variates assume every client trains from the same round (choose another strategy)".into(),
            );
        }
        if self.clients.over_selection > 1.0 {
            return bad(
                "clients.over_selection",
                "does not apply with [async], which never waits for the slowest client anyway (leave it at 1)".into(),
            );
        }
        if !(1..=MAX_ASYNC_CONCURRENCY).contains(&a.concurrency) {
            return bad(
                "async.concurrency",
                format!(
                    "= {}: give the clients training at once, 1 to {MAX_ASYNC_CONCURRENCY}",
                    a.concurrency
                ),
            );
        }
        if a.buffer_size == 0 || a.buffer_size > a.concurrency {
            return bad(
                "async.buffer_size",
                format!(
                    "= {}: give the updates per step, 1 to async.concurrency ({})",
                    a.buffer_size, a.concurrency
                ),
            );
        }
        shoal_shared::strategy::buffered::Staleness::parse(&a.staleness, a.staleness_exponent)
            .map_err(|e| Error::InvalidSpec(e.to_string()))?;
        Ok(())
    }

    /// The job's staleness weighting, for a checked `[async]` section.
    pub fn staleness(&self) -> Option<shoal_shared::strategy::buffered::Staleness> {
        let a = self.asynchronous.as_ref()?;
        shoal_shared::strategy::buffered::Staleness::parse(&a.staleness, a.staleness_exponent).ok()
    }

    /// Checks an automl job's search: its settings, and that every value of every parameter makes
    /// a valid train job from this one (so a typo fails at submission, not at trial 17).
    fn check_automl(&self) -> Result<AutomlOptions> {
        let bad = |field: &str, msg: String| Err(Error::InvalidSpec(format!("`{field}` {msg}")));
        let Some(a) = &self.automl else {
            return bad(
                "automl",
                "section is missing: an automl job needs [automl] with at least [automl.space]"
                    .into(),
            );
        };
        let core = |e: shoal_shared::Error| Error::InvalidSpec(e.to_string());
        a.space.check().map_err(core)?;
        a.tpe.check().map_err(core)?;
        if !(1..=MAX_TRIALS).contains(&a.trials) {
            return bad(
                "automl.trials",
                format!("must be 1..={MAX_TRIALS}, found {}", a.trials),
            );
        }
        if !(1..=MAX_PARALLEL_TRIALS).contains(&a.parallel_trials) {
            return bad(
                "automl.parallel_trials",
                format!(
                    "must be 1..={MAX_PARALLEL_TRIALS}, found {}",
                    a.parallel_trials
                ),
            );
        }
        if !(2..=10).contains(&a.eta) {
            return bad("automl.eta", format!("must be 2..=10, found {}", a.eta));
        }
        if a.search == SearchAlgorithm::Grid {
            a.space.grid().map_err(core)?;
        }
        if a.search == SearchAlgorithm::Halving && a.space.params.contains_key("rounds") {
            return bad(
                "automl.space",
                "cannot search `rounds` with successive halving: rounds are its budget".into(),
            );
        }
        if self.model.denoiser().is_some() {
            return bad(
                "model",
                "of an automl job must be a train model, not a denoiser".into(),
            );
        }
        if self.model.external().is_some() {
            return bad(
                "model",
                "of an automl job cannot be external (the search scores its final models on the coordinator, which cannot run client code)".into(),
            );
        }
        // Every listed value, and both ends of every range, alone on the base job.
        for (name, domain) in &a.space.params {
            let values: Vec<Value> = match domain {
                Domain::Choice(v) => v.clone(),
                Domain::Range {
                    low, high, integer, ..
                } => [low, high]
                    .iter()
                    .map(|&&x| {
                        if *integer {
                            Value::Int(x.round() as i64)
                        } else {
                            Value::Float(x)
                        }
                    })
                    .collect(),
            };
            for v in values {
                let config = Config::from([(name.clone(), v.clone())]);
                if let Err(e) = self.trial_spec(&config) {
                    return Err(Error::InvalidSpec(format!(
                        "automl.space.\"{name}\" = {v}: {}",
                        e.to_string().trim_start_matches("invalid job spec: ")
                    )));
                }
            }
        }
        Ok(a.clone())
    }

    /// The `train` job a trial runs: this spec with `config`'s overrides, checked.
    pub fn trial_spec(&self, config: &Config) -> Result<CheckedSpec> {
        let base = JobSpec {
            kind: "train".into(),
            automl: None,
            ..self.clone()
        };
        let mut doc = toml::Value::try_from(&base)
            .map_err(|e| Error::InvalidSpec(format!("cannot render the base job: {e}")))?;
        for (name, value) in config {
            if name == TREES_TOTAL {
                let Value::Int(total) = *value else {
                    return Err(Error::InvalidSpec(format!(
                        "`{TREES_TOTAL}` must be a whole number of trees, found {value}"
                    )));
                };
                if self.model.forest().is_none() {
                    return Err(Error::InvalidSpec(format!(
                        "`{TREES_TOTAL}` sizes a forest, but the model is {}",
                        self.model.name()
                    )));
                }
                let growers = i64::from(self.clients.min_available_clients.max(1))
                    * i64::from(self.rounds.max(1));
                if total < 1 {
                    return Err(Error::InvalidSpec(format!(
                        "`{TREES_TOTAL}` = {total}: a forest needs at least 1 tree"
                    )));
                }
                // Saturating: a huge total is refused by the forest's own limits, not by overflow.
                let per_round = (total.saturating_add(growers - 1) / growers).max(1);
                set_path(&mut doc, "model.max_trees", &Value::Int(total))?;
                set_path(&mut doc, "model.trees_per_round", &Value::Int(per_round))?;
            } else {
                set_path(&mut doc, name, value)?;
            }
        }
        let spec: JobSpec = doc.try_into().map_err(|e: toml::de::Error| {
            Error::InvalidSpec(e.to_string().trim().replace('\n', " ").replace("  ", " "))
        })?;
        let spec = spec.check()?;
        // A field the model kind does not have can slip through parsing (a logreg ignores
        // `model.max_depth`): every override must be found again in the parsed spec.
        let rendered = toml::Value::try_from(&*spec)
            .map_err(|e| Error::InvalidSpec(format!("cannot render the trial job: {e}")))?;
        for (name, value) in config.iter().filter(|(n, _)| n.as_str() != TREES_TOTAL) {
            let found = name.split('.').try_fold(&rendered, |at, part| at.get(part));
            let kept = match (value, found) {
                (Value::Text(t), None) => t == "none",
                (Value::Text(t), Some(toml::Value::String(f))) => t == f,
                (Value::Int(i), Some(toml::Value::Integer(f))) => i == f,
                (Value::Int(i), Some(toml::Value::Float(f))) => (*i as f64) == *f,
                (Value::Float(x), Some(toml::Value::Float(f))) => x == f,
                _ => false,
            };
            if !kept {
                return Err(Error::InvalidSpec(format!(
                    "`{name}` is not a field this job has (model {}, strategy {}), or does not take {value}",
                    self.model.name(),
                    self.strategy.name()
                )));
            }
        }
        Ok(spec)
    }

    /// The `[diffusion]` section, defaults filled in (the check takes it into [`JobKind`]).
    fn diffusion_options(&self) -> DiffusionOptions {
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

    /// How the job's clients send updates (`updates.compression`, checked by [`JobSpec::check`]).
    pub fn compression(&self) -> Compression {
        Compression::parse(&self.updates.compression, self.updates.topk_fraction)
            .unwrap_or_default()
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

/// Sets the field at dotted `path` of a rendered spec (creating tables on the way); `"none"`
/// removes it. An integer given for a field that holds a number becomes a number.
fn set_path(doc: &mut toml::Value, path: &str, value: &Value) -> Result<()> {
    let parts: Vec<&str> = path.split('.').collect();
    let Some((last, tables)) = parts.split_last() else {
        return Err(Error::InvalidSpec("an empty parameter name".into()));
    };
    let mut at = doc;
    for part in tables {
        let table = at.as_table_mut().ok_or_else(|| {
            Error::InvalidSpec(format!("`{path}`: `{part}` is not inside a section"))
        })?;
        at = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = at.as_table_mut().ok_or_else(|| {
        Error::InvalidSpec(format!("`{path}` does not name a field of a section"))
    })?;
    let new = match value {
        Value::Text(t) if t == "none" => {
            table.remove(*last);
            return Ok(());
        }
        Value::Int(i) if matches!(table.get(*last), Some(toml::Value::Float(_))) => {
            toml::Value::Float(*i as f64)
        }
        Value::Int(i) => toml::Value::Integer(*i),
        Value::Float(f) => toml::Value::Float(*f),
        Value::Text(t) => toml::Value::String(t.clone()),
    };
    table.insert(last.to_string(), new);
    Ok(())
}

/// Resolves a file a job names on the coordinator's host (`field`, e.g. `evaluation.holdout`)
/// under the operator's data folder. A submitted spec comes from whoever reaches the Jobs
/// service, so it may name only files the operator put there: no data folder, no files; no
/// absolute paths, no `..`, no symbolic link out of it. Refusals quote the given path (cut to
/// 200 characters), never anything read from a file.
pub fn resolve_data_file(
    data_dir: Option<&std::path::Path>,
    field: &str,
    given: &str,
) -> Result<std::path::PathBuf> {
    use std::path::{Component, Path};
    let shown: String = given.chars().take(200).collect();
    let Some(dir) = data_dir else {
        return Err(Error::InvalidSpec(format!(
            "`{field}` = {shown:?}: this coordinator reads no files named in jobs; start `serve` with --data-dir DIR and name a file under DIR"
        )));
    };
    let rel = Path::new(given);
    if given.is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(Error::InvalidSpec(format!(
            "`{field}` = {shown:?}: give a path relative to the coordinator's --data-dir, without `..`"
        )));
    }
    let root = dir
        .canonicalize()
        .map_err(|e| Error::io(format!("the data dir {} is unusable", dir.display()), e))?;
    let missing = || {
        Error::InvalidSpec(format!(
            "`{field}` = {shown:?}: no such file under the coordinator's --data-dir"
        ))
    };
    let full = root.join(rel).canonicalize().map_err(|_| missing())?;
    if !full.starts_with(&root) || !full.is_file() {
        return Err(missing());
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_spec_gets_defaults() {
        let s = CheckedSpec::from_toml("kind = \"train\"\ndataset = \"digits\"\nrounds = 10\n")
            .unwrap();
        assert_eq!(s.rounds, 10);
        assert_eq!(s.model, ModelSpec::default());
        assert_eq!(s.clients.min_fit_clients, 2);
        // The normalised form parses back to the same spec.
        assert_eq!(CheckedSpec::from_toml(&s.to_toml()).unwrap(), s);
    }

    #[test]
    fn sections_override_defaults() {
        let s = CheckedSpec::from_toml(
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
            (
                "kind = \"train\"\n[updates]\nweight_cap = 0.5",
                "updates.weight_cap",
            ),
            (
                "kind = \"train\"\n[updates]\nadaptive_refuse = -1",
                "updates.adaptive_refuse",
            ),
            // A field the model does not have was once ignored for logreg; it is refused.
            (
                "kind = \"train\"\n[model]\nkind = \"logreg\"\nhidden = [3]",
                "unknown field `hidden`",
            ),
            ("kind = \"automl\"", "needs [automl]"),
            (
                "kind = \"automl\"\n[automl.space]\n\"model.max_dept\" = [3]",
                "max_dept",
            ),
            (
                "kind = \"automl\"\n[automl]\nsearch = \"grid\"\n[automl.space]\n\"local.lr\" = { low = 0.01, high = 0.1 }",
                "grid search needs a list",
            ),
            (
                "kind = \"automl\"\n[automl.space]\n\"local.lr\" = [0.1, -1.0]",
                "\"local.lr\" = -1",
            ),
            (
                "kind = \"automl\"\n[automl.space]\ntrees_total = [10]",
                "sizes a forest",
            ),
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
            (
                "kind = \"train\"\n[clients]\nover_selection = 0.5",
                "over_selection",
            ),
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
            (
                "kind = \"train\"\n[model]\nkind = \"external\"",
                "model.tensors",
            ),
            (
                "kind = \"train\"\n[model]\nkind = \"external\"\ntensors = [{ name = \"w\", shape = [2] }]\n[strategy]\nname = \"scaffold\"",
                "external trainers do not",
            ),
            (
                "kind = \"automl\"\n[model]\nkind = \"external\"\ntensors = [{ name = \"w\", shape = [2] }]\n[automl.space]\n\"local.lr\" = [0.1]",
                "cannot be external",
            ),
            (
                "kind = \"train\"\n[model]\nkind = \"external\"\ninit = \"file\"",
                "needs init_file",
            ),
            (
                "kind = \"train\"\n[model]\nkind = \"external\"\ninit = \"client\"\ninit_file = \"w.safetensors\"",
                "only with init = \"file\"",
            ),
            (
                "kind = \"fusion\"\n[async]\nconcurrency = 4",
                "is for train jobs",
            ),
            (
                "kind = \"train\"\n[model]\nkind = \"forest\"\n[async]\nconcurrency = 4",
                "a forest model's rounds grow trees",
            ),
            (
                "kind = \"train\"\n[strategy]\nname = \"scaffold\"\n[async]\nconcurrency = 4",
                "does not work with strategy = \"scaffold\"",
            ),
            (
                "kind = \"train\"\n[clients]\nover_selection = 2\n[async]\nconcurrency = 4",
                "clients.over_selection",
            ),
            (
                "kind = \"train\"\n[async]\nconcurrency = 0",
                "async.concurrency",
            ),
            (
                "kind = \"train\"\n[async]\nconcurrency = 4\nbuffer_size = 5",
                "1 to async.concurrency (4)",
            ),
            (
                "kind = \"train\"\n[async]\nstaleness = \"hinge\"",
                "async.staleness",
            ),
            (
                "kind = \"train\"\n[async]\nstaleness_exponent = -1",
                "async.staleness_exponent",
            ),
            ("kind = \"train\"\n[async]\nbuffer = 3", "unknown field `buffer`"),
        ];
        for (text, needle) in cases {
            let err = CheckedSpec::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn strategy_and_model_sections_parse_with_defaults() {
        let s = CheckedSpec::from_toml(
            "kind = \"train\"\n[model]\nkind = \"mlp\"\nhidden = [32, 16]\n[strategy]\nname = \"fedadam\"\neta = 0.05\n",
        )
        .unwrap();
        assert_eq!(s.model.label(), "mlp(32,16)");
        assert_eq!(s.strategy.name(), "fedadam");
        let prox =
            CheckedSpec::from_toml("kind = \"train\"\n[strategy]\nname = \"fedprox\"\n").unwrap();
        assert_eq!(prox.proximal_mu(), 0.01);
        let clash =
            "kind = \"train\"\n[strategy]\nname = \"fedprox\"\n[local]\nproximal_mu = 0.5\n";
        assert!(CheckedSpec::from_toml(clash)
            .unwrap_err()
            .to_string()
            .contains("proximal_mu"));
        let eta_l = "kind = \"train\"\n[strategy]\nname = \"fedyogi\"\neta_l = 0.03\n[local]\nlr_decay = 0.5\n";
        let s = CheckedSpec::from_toml(eta_l).unwrap();
        assert!((s.local_lr(1) - 0.03).abs() < 1e-12 && (s.local_lr(2) - 0.015).abs() < 1e-12);
        let bad = "kind = \"train\"\n[strategy]\nname = \"fedtrimmedavg\"\nbeta = 0.7\n";
        assert!(CheckedSpec::from_toml(bad)
            .unwrap_err()
            .to_string()
            .contains("beta"));
    }

    #[test]
    fn checked_spec_carries_its_kind_and_a_changed_spec_is_checked_again() {
        let s = CheckedSpec::from_toml(
            "kind = \"diffusion\"\ndataset = \"signals\"\n[model]\nkind = \"denoiser\"\n[diffusion]\nsamples = 7\n",
        )
        .unwrap();
        assert!(matches!(s.kind(), JobKind::Diffusion { samples: 7, .. }));
        assert_eq!(s.kind().as_str(), s.kind);
        let mut changed = s.into_spec();
        changed.rounds = 0;
        let err = changed.check().unwrap_err().to_string();
        assert!(err.contains("`rounds` must be between 1"), "{err}");
    }

    #[test]
    fn json_is_accepted() {
        let s = CheckedSpec::from_json(r#"{"kind":"train","rounds":3}"#).unwrap();
        assert_eq!(s.rounds, 3);
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The job files shipped in `examples/` stay valid.
    #[test]
    fn shipped_examples_parse() {
        let full = CheckedSpec::from_toml(include_str!("../../examples/digits.toml")).unwrap();
        assert_eq!(full.rounds, 30);
        assert_eq!(
            full.local,
            LocalConfig::default(),
            "digits.toml documents the defaults"
        );
        let csv =
            CheckedSpec::from_toml(include_str!("../../examples/csv-quickstart.toml")).unwrap();
        assert_eq!(csv.evaluation.holdout.as_deref(), Some("shards/test.csv"));
        let fusion = CheckedSpec::from_toml(include_str!("../../examples/fusion.toml")).unwrap();
        assert_eq!(fusion.kind(), &JobKind::Fusion);
        let diffusion =
            CheckedSpec::from_toml(include_str!("../../examples/diffusion.toml")).unwrap();
        assert_eq!(
            diffusion.model.denoiser(),
            Some(&shoal_shared::models::diffusion::DenoiserSpec::default()),
            "diffusion.toml documents the defaults"
        );
        assert!(matches!(
            diffusion.kind(),
            JobKind::Diffusion { samples: 90, .. }
        ));
        let automl =
            CheckedSpec::from_toml(include_str!("../../examples/automl-seed.toml")).unwrap();
        let JobKind::Automl(opts) = automl.kind() else {
            panic!("automl-seed.toml is an automl job")
        };
        let grid = opts.space.grid().unwrap();
        assert_eq!(grid.len(), 36, "the tutorial's grid");
        for config in &grid {
            let trial = automl.trial_spec(config).unwrap();
            let forest = trial.model.forest().unwrap();
            // 5 clients x 5 rounds grow exactly the total.
            assert_eq!(forest.trees_per_round * 25, forest.max_trees);
            assert_eq!(trial.kind(), &JobKind::Train);
            assert!(trial.automl.is_none());
        }
        let none = grid
            .iter()
            .find(|c| c["model.max_depth"] == shoal_shared::automl::Value::Text("none".into()))
            .unwrap();
        assert_eq!(
            automl
                .trial_spec(none)
                .unwrap()
                .model
                .forest()
                .unwrap()
                .max_depth,
            None
        );
        let forest = CheckedSpec::from_toml(include_str!("../../examples/forest.toml")).unwrap();
        assert_eq!(forest.model.forest().map(|p| p.trees_per_round), Some(5));
    }
}
