//! The algorithm boundary: what a model kind's server half asks of clients, phase by phase, and
//! what comes back.
//!
//! # Why phases, not fit/aggregate
//! A round is not always "everyone trains, the server averages". Boosting asks every available
//! client for a quantile sketch before its first round, then, per output and per tree level, for
//! gradient histograms of the nodes it is growing; a forest asks for new trees and needs no global
//! model to do so; secure aggregation will add phases of its own (key exchange, masked input,
//! unmasking). So a server half is a small state machine in the spirit of
//! [`super::gbdt::TreeGrower`]'s request/absorb cycle and the streaming
//! [`crate::strategy::Aggregator`]:
//!
//! 1. [`ServerHalf::begin_round`] hands it the round's [`RoundPlan`] (who was sampled, who is
//!    there, the quorum);
//! 2. it answers with a [`Step`]: [`Step::Ask`] some clients a [`Request`] with a [`Payload`] of
//!    the global model, or [`Step::Done`] with the round's result;
//! 3. the driver (the coordinator's round engine, which owns the network, deadlines and
//!    strikes) feeds each arriving [`Reply`] to [`ServerHalf::accept`], which absorbs it or
//!    refuses it with a typed [`Rejection`], and calls [`ServerHalf::close`] with the
//!    phase's [`PhaseTally`] when the phase ends, which answers with the next [`Step`].
//!
//! Nothing here does I/O or knows about gRPC: the transport (the coordinator's round engine and
//! the client's executor) converts [`Request`] and [`Reply`] to and from the wire, and the same
//! halves are driven without one in this crate's tests. The client half of each kind is a plain function of (request, local data, per-job
//! client state) to reply: see [`super::Kind::handle`].

use crate::tensor::Weights;

/// Who takes part in a round, as the driver sampled them.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundPlan {
    pub round: u32,
    /// Clients asked to train, in the driver's order (the order tasks go out).
    pub selected: Vec<String>,
    /// Every client available to the job (quarantined ones left out), in the driver's order.
    pub available: Vec<String>,
    /// Valid replies the training phase needs (`clients.min_fit_clients`, at most `selected`).
    pub quorum: usize,
    /// `clients.min_fit_clients` as the job gives it (boosting's sketch phase asks every
    /// available client and needs this many, at most all of them).
    pub min_clients: usize,
    /// With over-selection: close the training phase once this many updates are in.
    pub target: Option<usize>,
    /// Clients available when the round started, quarantined ones included (FedAvgM and
    /// SCAFFOLD weigh their server step by the fraction that took part).
    pub n_available: usize,
    /// The examples each selected client announced for the split it trains on, in `selected`'s
    /// order (0 where it announced none). No reply may count more, so their sum bounds the
    /// round's (the weights models size their exact sums by it).
    pub announced: Vec<u64>,
}

/// What a phase asks its clients to do. The driver adds what every task carries (job, round,
/// dataset, class names, local training settings, deadline, seed).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Train locally, from the payload's global model where there is one. `control`: SCAFFOLD's
    /// server control variate.
    Fit { control: Option<Weights> },
    /// Boosting: a mergeable quantile summary of each local feature.
    Sketch,
    /// Boosting: gradient/hessian histograms of `nodes` of the tree for `output` grown so far.
    Histogram(HistogramRequest),
}

/// Boosting's histogram request.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramRequest {
    /// Which output (class) the tree is for.
    pub output: u32,
    /// The tree so far (splits only), to route rows to nodes.
    pub partial_tree: super::gbdt::GTree,
    /// Nodes whose histograms are wanted.
    pub nodes: Vec<u32>,
    /// The first level of a round's first tree: the payload carries the ensemble, from which the
    /// client computes its gradients and keeps them for the rest of the round.
    pub first_level: bool,
}

/// What a task carries of the global model.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Payload {
    /// Nothing (a forest's clients grow new trees on their own rows).
    #[default]
    None,
    /// A weights model's parameters, shared with the server half (no copy per phase).
    Weights(std::sync::Arc<Weights>),
    /// The global forest (its evaluation tasks), shared with the server half.
    Forest(std::sync::Arc<super::forest::Forest>),
    /// The boosted ensemble (a round's first histogram level, evaluation tasks), shared with the
    /// server half.
    Ensemble(std::sync::Arc<super::gbdt::Ensemble>),
}

/// One phase of a round, as the server half asks for it.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The round the tasks are tagged with: the plan's, or 0 for a one-off exchange before the
    /// first round (boosting's sketches).
    pub round: u32,
    /// Who is asked, in the order the plan gave them.
    pub clients: Vec<String>,
    pub request: Request,
    pub payload: Payload,
    /// Valid replies the phase needs before `wait_after_quorum_secs` starts counting.
    pub quorum: usize,
    /// Close the phase as soon as this many replies are accepted (over-selection).
    pub target: Option<usize>,
}

/// What the server half wants next.
#[derive(Debug, Clone)]
pub enum Step {
    /// Run this phase, feed its replies to `accept`, then call `close`.
    Ask(Ask),
    /// The round is over.
    Done(RoundResult),
}

/// The training part of a round, as the server half saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundResult {
    /// Clients whose contribution entered the model. Below the plan's quorum, the round failed
    /// and the global model is unchanged.
    pub accepted: usize,
    /// Example-weighted mean of the clients' local training loss (NaN when the round failed).
    pub train_loss: f64,
    /// Replies accepted one by one but refused once the phase's others were in (an update far
    /// beyond the round's median): client and reason. Each counts against its client.
    pub refused: Vec<(String, String)>,
}

impl RoundPlan {
    /// The plan of the round whose phase is closing. `None` means `close` came before
    /// `begin_round`, which only a driver that breaks the cycle does: refused, not a panic.
    pub fn of_open_round(plan: &mut Option<RoundPlan>) -> crate::Result<RoundPlan> {
        plan.take()
            .ok_or_else(|| crate::Error::Data("a phase closed before its round began".into()))
    }
}

impl PhaseTally {
    /// The end of a round whose one training phase fell short of its quorum: nothing entered
    /// the model.
    pub fn short_of(&self, quorum: usize) -> Option<Step> {
        (self.accepted < quorum.max(1)).then_some(Step::Done(RoundResult {
            accepted: self.accepted,
            train_loss: f64::NAN,
            refused: Vec::new(),
        }))
    }
}

/// How a phase ended, as the driver counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTally {
    /// Replies accepted.
    pub accepted: usize,
    /// Replies refused.
    pub rejected: usize,
    /// Clients that left or could not be sent the task.
    pub failed: usize,
    /// Clients still silent when the phase closed.
    pub timed_out: usize,
}

/// A client's answer to a [`Request`]. Parameters are decoded by the driver within the bounds
/// of [`ServerHalf::decode_bounds`]; trees, sketches and histograms arrive as decoded but
/// unchecked values, for the server half to check against the job (features, classes, edges,
/// its own limits).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Fit(FitReply),
    Sketch(SketchReply),
    Histogram(HistogramReply),
}

/// The answer to [`Request::Fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct FitReply {
    pub num_examples: u64,
    pub train_loss: f64,
    /// A weights model's new parameters.
    pub parameters: Option<Weights>,
    /// SCAFFOLD: the change of the client's control variate.
    pub control_delta: Option<Weights>,
    /// A forest's new trees (unchecked).
    pub trees: Option<super::forest::Forest>,
}

/// The answer to [`Request::Sketch`].
#[derive(Debug, Clone, PartialEq)]
pub struct SketchReply {
    /// The client's quantile sketch (unchecked).
    pub sketch: super::gbdt::QuantileSketch,
    pub num_examples: u64,
}

/// The answer to [`Request::Histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramReply {
    /// One histogram's values per requested node, in the request's order (unchecked: see
    /// [`super::gbdt::histograms_from_values`]).
    pub histograms: Vec<Vec<f64>>,
    pub num_examples: u64,
    /// Loss of the current ensemble on the local train rows (first level only).
    pub train_loss: f64,
}

/// How far the driver decodes a fit reply's tensors before the server half sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeBounds {
    /// Largest tensor payload decoded, in elements; `None`: parameters are not wanted and are
    /// ignored.
    pub max_elements: Option<usize>,
    /// Whether a control-variate delta is wanted (decoded within the same bound) or ignored.
    pub control: bool,
}

impl DecodeBounds {
    /// No tensors wanted: parameters and control deltas are ignored (tree models).
    pub const NONE: DecodeBounds = DecodeBounds {
        max_elements: None,
        control: false,
    };
}

/// Why a reply was refused. Each message names what is wrong; the client is struck for it.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The client could not run the task and said why.
    #[error("client error: {}", crate::text::clip(.0, crate::text::TEXT_CHARS))]
    ClientError(String),
    /// Another kind of answer than the phase asked for.
    #[error("expected {0}")]
    WrongKind(&'static str),
    /// A result for another job or round than the task it answers.
    #[error("{0}")]
    Misaddressed(String),
    /// A reply no phase is waiting for.
    #[error("unexpected reply: {0}")]
    Unexpected(&'static str),
    /// A part the reply must carry is missing.
    #[error("{0}")]
    Missing(&'static str),
    /// The reply does not decode or does not fit the model (shape, finiteness, limits).
    #[error("{context}{message}")]
    Invalid {
        /// What part of the reply, as `"control_delta: "`, or empty.
        context: &'static str,
        message: String,
    },
    /// An example count of zero or beyond what the client announced in its Hello.
    #[error("reports {found} {split} examples; it announced {announced} in its Hello")]
    Count {
        found: u64,
        split: &'static str,
        announced: u64,
    },
    /// A loss no honest client reports (not finite, or beyond [`MAX_LOSS`]).
    #[error("implausible train_loss {0}")]
    Loss(f64),
    /// An update farther from the global model than the job allows.
    #[error("update norm {norm:.4} is over the job's bound of {max} (updates.max_norm)")]
    Norm { norm: f64, max: f64 },
    /// An update far beyond the round's others (see [`Influence::refuse_norm`]).
    #[error("update distance {distance:.4e} is over {times} times the round's median distance {median:.4e} (updates.adaptive_refuse)")]
    Far {
        distance: f64,
        times: f64,
        median: f64,
    },
    /// Values outside what the client's data can give (boosting's histogram sums).
    #[error("{0}")]
    Implausible(String),
}

impl Rejection {
    /// A decoding or shape error of the reply's main part.
    pub fn invalid(e: impl std::fmt::Display) -> Self {
        Self::invalid_in("", e)
    }

    /// A decoding or shape error of one part of the reply (`context` as `"control_delta: "`).
    pub fn invalid_in(context: &'static str, e: impl std::fmt::Display) -> Self {
        Rejection::Invalid {
            context,
            message: e.to_string(),
        }
    }
}

/// Largest absolute loss a result may report; beyond it a weighted mean could overflow.
pub const MAX_LOSS: f64 = 1e12;

/// An example count must be positive and at most what the client announced: otherwise one client
/// could outweigh all the others in a weighted mean.
pub fn check_count(
    found: u64,
    announced: Option<u64>,
    split: &'static str,
) -> Result<(), Rejection> {
    let announced = announced.unwrap_or(0);
    if found == 0 || found > announced {
        return Err(Rejection::Count {
            found,
            split,
            announced,
        });
    }
    Ok(())
}

/// A training loss must be finite and at most [`MAX_LOSS`] in size.
pub fn check_loss(loss: f64) -> Result<(), Rejection> {
    if loss.is_finite() && loss.abs() <= MAX_LOSS {
        Ok(())
    } else {
        Err(Rejection::Loss(loss))
    }
}

/// How far one client can move the aggregate, whatever its Hello announced (the job's
/// `[updates]` section). Both limits are relative to the round's own accepted replies, so they
/// follow the federation as it is: a lie about a client's size or a far-off update is cut down to
/// a multiple of what the round's median client did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Influence {
    /// A reply's example count weighs at most this many times the median count of the round's
    /// accepted replies; `None`: counts weigh as reported (still at most as announced).
    pub weight_cap: Option<f64>,
    /// An update farther from the global model than this many times the median distance of the
    /// round's accepted updates is scaled back to that distance (weights models); `None`: no bound.
    pub adaptive_norm: Option<f64>,
    /// An update farther than this many times the median distance is refused (a strike): no
    /// honest client of the seeded examples comes near it, so it marks a broken or hostile peer.
    pub refuse_norm: Option<f64>,
}

impl Influence {
    /// The largest weight one of `weights` may have, or `None` for no cap.
    pub fn weight_limit(&self, weights: &[f64]) -> Option<f64> {
        Some(self.weight_cap? * lower_median(weights)?)
    }

    /// The largest distance one of `distances` may have, or `None` for no bound.
    pub fn norm_limit(&self, distances: &[f64]) -> Option<f64> {
        Some(self.adaptive_norm? * lower_median(distances)?)
    }
}

/// The lower median (of an even count, the smaller middle value: with one honest and one hostile
/// reply, the honest one sets the scale). `None` when empty.
pub fn lower_median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len().checked_sub(1)? / 2).copied()
}

/// `count` cut to `limit` (at least 1, so a capped reply still counts).
pub fn capped_count(count: u64, limit: Option<f64>) -> u64 {
    match limit {
        Some(l) => count.min(l.max(1.0) as u64),
        None => count,
    }
}

/// An example-weighted mean whose terms are summed in client-name order at the end, so that it
/// does not depend on the order in which replies arrived (floating-point addition is not
/// associative).
#[derive(Debug, Default, Clone)]
pub struct OrderedMean(Vec<(String, f64, f64)>);

impl OrderedMean {
    pub fn push(&mut self, client: &str, value: f64, weight: f64) {
        self.0.push((client.to_string(), value, weight));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The weights, in push order.
    pub fn weights(&self) -> Vec<f64> {
        self.0.iter().map(|e| e.2).collect()
    }

    /// Keeps the terms of the clients for which `keep` holds.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.0.retain(|e| keep(&e.0));
    }

    /// Cuts every weight to `limit` (see [`Influence::weight_limit`]).
    pub fn cap_weights(&mut self, limit: Option<f64>) {
        if let Some(l) = limit {
            for e in &mut self.0 {
                e.2 = e.2.min(l.max(1.0));
            }
        }
    }

    /// The weighted mean (NaN when empty).
    pub fn mean(&mut self) -> f64 {
        self.0.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut sum, mut weight) = (0.0f64, 0.0f64);
        for (_, v, w) in &self.0 {
            sum += v * w;
            weight += w;
        }
        sum / weight
    }
}

// ---- The client side ----

/// A task as a client half reads it (the transport has decoded it).
#[derive(Debug, Clone)]
pub struct ClientTask {
    pub job: String,
    pub round: u32,
    /// Seeds this task's randomness (derived from job seed, round and client).
    pub seed: u64,
    /// The job's classes: rows are mapped into this list by name.
    pub n_classes: usize,
    pub payload: Payload,
    pub work: Work,
}

/// The kinds of task a client can be sent, as its Hello lists them (`task_kinds`): a client is
/// sent only the kinds it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskKind {
    Fit,
    Evaluate,
    Sketch,
    Histogram,
    /// An external model's initial parameters, asked of one client (`init = "client"`).
    Parameters,
}

impl TaskKind {
    pub const ALL: [TaskKind; 5] = [
        TaskKind::Fit,
        TaskKind::Evaluate,
        TaskKind::Sketch,
        TaskKind::Histogram,
        TaskKind::Parameters,
    ];

    /// The name a Hello gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Fit => "fit",
            TaskKind::Evaluate => "evaluate",
            TaskKind::Sketch => "sketch",
            TaskKind::Histogram => "histogram",
            TaskKind::Parameters => "parameters",
        }
    }

    /// Parses a Hello's name; `None` for a name this version does not know.
    pub fn from_name(name: &str) -> Option<TaskKind> {
        TaskKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client says it runs (its Hello's `model_kinds` and `task_kinds`): the coordinator
/// sends it only tasks of those kinds, for jobs of those model kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub model_kinds: std::collections::BTreeSet<String>,
    pub task_kinds: std::collections::BTreeSet<TaskKind>,
    /// The largest message the client receives and sends, as its Hello said (0: not said).
    pub max_message_bytes: u64,
    /// The largest message it reassembles from chunks, as its Hello said (0: it takes none).
    pub max_transfer_bytes: u64,
}

/// What a client that does not say its message limit is taken to accept: gRPC's limit in Shoal's
/// clients before they said it.
pub const DEFAULT_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;

/// Most model kinds a Hello may list.
pub const MAX_MODEL_KINDS: usize = 16;
/// Longest kind name a Hello may list; longer ones are refused without being echoed.
pub const MAX_KIND_NAME_BYTES: usize = 32;

/// A kind name fit to be quoted in a refusal: short and printable.
fn quotable(name: &str) -> Result<&str, String> {
    if name.len() > MAX_KIND_NAME_BYTES || name.chars().any(char::is_control) {
        Err(format!(
            "a name of {} bytes that is not a kind (names are at most {MAX_KIND_NAME_BYTES} printable bytes)",
            name.len()
        ))
    } else {
        Ok(name)
    }
}

impl Capabilities {
    /// What the built-in client runs: every model kind Shoal trains itself (not `external`,
    /// which needs a trainer of the client's own), every task kind those need.
    pub fn builtin() -> Self {
        Capabilities {
            model_kinds: super::ModelSpec::names()
                .split(", ")
                .filter(|k| *k != "external")
                .map(String::from)
                .collect(),
            task_kinds: TaskKind::ALL
                .into_iter()
                .filter(|t| *t != TaskKind::Parameters)
                .collect(),
            max_message_bytes: 0,
            max_transfer_bytes: 0,
        }
    }

    /// The largest message the client takes ([`DEFAULT_MESSAGE_BYTES`] when it did not say).
    pub fn message_limit(&self) -> u64 {
        match self.max_message_bytes {
            0 => DEFAULT_MESSAGE_BYTES,
            n => n,
        }
    }

    /// Why a task or update of about `bytes` bytes cannot travel to and from this client, or
    /// `None` when it can: in one message within its message limit, or in chunks within its
    /// transfer limit. The reason names the client flag that would let it through.
    pub fn misfit_size(&self, bytes: u64) -> Option<String> {
        let limit = self.message_limit();
        if bytes <= limit || bytes <= self.max_transfer_bytes {
            return None;
        }
        Some(if self.max_transfer_bytes == 0 {
            format!(
                "it accepts messages of up to {limit} bytes and no chunked transfers, and this job's model takes about {bytes}; start the client with --max-message-bytes {bytes} or more, or use a client that takes chunks (Hello.max_transfer_bytes)"
            )
        } else {
            format!(
                "it accepts chunked transfers of up to {} bytes and this job's model takes about {bytes}; start the client with --max-transfer-bytes {bytes} or more",
                self.max_transfer_bytes
            )
        })
    }

    /// Reads a Hello's lists: 1 to [`MAX_MODEL_KINDS`] model kinds this version knows, 1 to 4
    /// task kinds; the error names the list and the bad entry.
    pub fn parse(model_kinds: &[String], task_kinds: &[String]) -> crate::Result<Self> {
        let bad = |field: &str, m: String| Err(crate::Error::invalid(field, m));
        if model_kinds.is_empty() || model_kinds.len() > MAX_MODEL_KINDS {
            return bad(
                "Hello.model_kinds",
                format!(
                    "list 1 to {MAX_MODEL_KINDS} model kinds this client runs (e.g. \"external\"), found {}",
                    model_kinds.len()
                ),
            );
        }
        let known = super::ModelSpec::names();
        let mut caps = Capabilities::default();
        for k in model_kinds {
            let k = match quotable(k) {
                Ok(k) => k,
                Err(m) => return bad("Hello.model_kinds", m),
            };
            if !known.split(", ").any(|n| n == k) {
                return bad(
                    "Hello.model_kinds",
                    format!("`{k}` is not a model kind (expected {known})"),
                );
            }
            caps.model_kinds.insert(k.to_string());
        }
        let distinct: std::collections::BTreeSet<&String> = task_kinds.iter().collect();
        if distinct.is_empty() || distinct.len() > TaskKind::ALL.len() {
            return bad(
                "Hello.task_kinds",
                format!(
                    "list 1 to 5 task kinds this client runs (fit, evaluate, sketch, histogram, parameters), found {}",
                    task_kinds.len()
                ),
            );
        }
        for k in task_kinds {
            let k = match quotable(k) {
                Ok(k) => k,
                Err(m) => return bad("Hello.task_kinds", m),
            };
            let Some(t) = TaskKind::from_name(k) else {
                return bad(
                    "Hello.task_kinds",
                    format!(
                        "`{k}` is not a task kind (expected fit, evaluate, sketch, histogram or parameters)"
                    ),
                );
            };
            caps.task_kinds.insert(t);
        }
        Ok(caps)
    }

    /// Whether the client trains or evaluates `model` with every kind of task in `tasks`.
    pub fn runs(&self, model: &str, tasks: &[TaskKind]) -> bool {
        self.model_kinds.contains(model) && tasks.iter().all(|t| self.task_kinds.contains(t))
    }
}

/// What a task asks a client to do.
#[derive(Debug, Clone)]
pub enum Work {
    /// Train locally with `local` (SCAFFOLD: corrected by the server control variate `control`).
    Fit {
        local: crate::models::sgd::LocalConfig,
        control: Option<Weights>,
    },
    /// Score the payload's model on the local test split; with `personalize`, also after that
    /// many local epochs from it (weights models).
    Evaluate {
        personalize: Option<crate::models::sgd::LocalConfig>,
    },
    Sketch,
    Histogram(HistogramRequest),
}

/// A client's answer: a reply to a training phase, or an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Reply(Reply),
    Evaluated(Evaluation),
}

/// The answer to an Evaluate task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub num_examples: u64,
    pub loss: f64,
    pub accuracy: f64,
    /// Classes present in the local test split.
    pub classes_present: u32,
    pub personalized_accuracy: Option<f64>,
}

impl Evaluation {
    pub fn of(
        stats: &crate::models::sgd::EvalStats,
        test: &crate::data::Dataset,
        personalized_accuracy: Option<f64>,
    ) -> Self {
        Evaluation {
            num_examples: stats.num_examples,
            loss: stats.loss,
            accuracy: stats.accuracy,
            classes_present: test.classes_present() as u32,
            personalized_accuracy,
        }
    }
}

/// What a client keeps for one job between its tasks (SCAFFOLD's control variate, a boosting
/// round's binned rows): whatever the kind's client half stored, and how many jobs' worth of that
/// kind of state a client keeps. Only the kind that stored a value reads it back, by its type, so
/// adding a kind with state of its own touches no list here.
#[derive(Clone, Default)]
pub struct ClientState {
    value: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
    capacity: usize,
}

impl std::fmt::Debug for ClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientState")
            .field("held", &self.value.is_some())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl ClientState {
    /// A state to keep; a client keeps at most `capacity` jobs' states of this type (the
    /// oldest go first), so memory stays bounded however many jobs it serves.
    pub fn new<T: std::any::Any + Send + Sync>(value: std::sync::Arc<T>, capacity: usize) -> Self {
        ClientState {
            value: Some(value),
            capacity,
        }
    }

    /// The value, if this state holds one of type `T`.
    pub fn get<T: std::any::Any + Send + Sync>(&self) -> Option<std::sync::Arc<T>> {
        self.value.clone()?.downcast::<T>().ok()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether two states hold the same type of value (they share a capacity).
    pub fn same_kind(&self, other: &ClientState) -> bool {
        match (&self.value, &other.value) {
            (Some(a), Some(b)) => (**a).type_id() == (**b).type_id(),
            (None, None) => true,
            _ => false,
        }
    }
}

/// A client's rows as a task sees them: labels mapped into the job's class list, then presented
/// through the task's fusion view, if any. Each split is prepared only when a task asks for it.
#[derive(Debug, Clone, Copy)]
pub struct TaskData<'a> {
    pub raw_train: &'a crate::data::Dataset,
    pub raw_test: &'a crate::data::Dataset,
    pub class_names: &'a [String],
    pub view: Option<&'a crate::fusion::FeatureView>,
}

impl TaskData<'_> {
    fn prepare(&self, d: &crate::data::Dataset) -> crate::Result<crate::data::Dataset> {
        let remapped = d.remap_classes(self.class_names)?;
        match self.view {
            Some(v) => v.apply(&remapped),
            None => Ok(remapped),
        }
    }

    pub fn train(&self) -> crate::Result<crate::data::Dataset> {
        self.prepare(self.raw_train)
    }

    pub fn test(&self) -> crate::Result<crate::data::Dataset> {
        self.prepare(self.raw_test)
    }

    /// Features a model sees: the view's width, or the rows' own.
    pub fn n_features(&self) -> usize {
        match self.view {
            Some(v) => v.width(self.class_names.len()),
            None => self.raw_train.n_features(),
        }
    }
}

// ---- The server half ----

/// Scores a model on a dataset, owning what it needs so it can run on another thread.
pub type Evaluator = Box<
    dyn Fn(&crate::data::Dataset) -> crate::Result<crate::models::sgd::EvalStats> + Send + Sync,
>;

/// The same model kind trained centrally on pooled rows (first argument) and scored on a test set
/// (second): the summary's reference for what federation costs.
pub type Baseline =
    Box<dyn FnOnce(&crate::data::Dataset, &crate::data::Dataset) -> crate::Result<f64> + Send>;

/// What a centralized baseline needs to know of the job.
#[derive(Debug, Clone)]
pub struct BaselineSettings {
    pub local: crate::models::sgd::LocalConfig,
    pub rounds: u32,
    pub seed: u64,
    pub n_classes: usize,
}

/// A job's server half: the global model and what trains it, driven phase by phase (see the
/// module doc). One implementation per model kind, in the kind's folder.
pub trait ServerHalf: Send + Sync + std::fmt::Debug {
    /// Starts a round: its first phase.
    fn begin_round(&mut self, plan: RoundPlan) -> crate::Result<Step>;

    /// How the driver decodes fit replies' tensors for this model (by default, not at all).
    fn decode_bounds(&self) -> DecodeBounds {
        DecodeBounds::NONE
    }

    /// One client's reply to the open phase; `announced`: the train examples its Hello gave.
    fn accept(
        &mut self,
        client: &str,
        reply: Reply,
        announced: Option<u64>,
    ) -> Result<(), Rejection>;

    /// The open phase ended; the next phase, or the round's result.
    fn close(&mut self, tally: PhaseTally) -> crate::Result<Step>;

    /// The global model as an Evaluate task carries it.
    fn payload(&self) -> Payload;

    /// A scorer of the global model as it is now; `None` when only the clients can score it (an
    /// external model), so the coordinator skips centralized evaluation.
    fn evaluator(&self) -> Option<Evaluator>;

    /// Whether evaluation yields an accuracy (a diffusion denoiser's does not: its loss is the
    /// noise-prediction MSE).
    fn classifies(&self) -> bool {
        true
    }

    /// Whether clients train from the global model, so that over-selection (closing the phase at
    /// the first updates) and personalisation (local epochs from it) apply.
    fn trains_from_global(&self) -> bool {
        false
    }

    /// Size of the model, for logs: parameters or trees.
    fn size(&self) -> usize;

    /// The final model as JSON for the run folder.
    fn to_json(&self) -> serde_json::Value;

    /// The checkpoint of the model: JSON tagged with its `kind` (trees), or a safetensors file
    /// with that JSON in its metadata (weights models).
    fn checkpoint(&self) -> crate::Result<Vec<u8>>;

    /// Puts back the model a checkpoint holds, checked against this (freshly initialised) one.
    fn restore(&mut self, checkpoint: &[u8]) -> crate::Result<()>;

    /// The global weights, for a weights model (fusion stacks them, diffusion generates from
    /// them).
    fn weights(&self) -> Option<&Weights> {
        None
    }

    /// The centralized reference for this model as it ended, where the kind has one.
    fn baseline(&self, settings: &BaselineSettings) -> Option<Baseline>;
}

/// A checkpoint's JSON and the `kind` tag it carries, checked against `expected`; the messages
/// are the ones a restore reports.
pub fn checkpoint_body(json: &[u8], expected: &str) -> crate::Result<serde_json::Value> {
    let bad = |e: String| crate::Error::Data(format!("the checkpoint cannot be restored: {e}"));
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    match value.get("kind").and_then(|k| k.as_str()) {
        Some(k) if k == expected => Ok(value),
        Some(_) => Err(bad("it was written for another kind of model".into())),
        None => Err(bad("missing field `kind`".into())),
    }
}

/// Wraps a restore error the way every kind reports it.
pub fn restore_error(e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Data(format!("the checkpoint cannot be restored: {e}"))
}
