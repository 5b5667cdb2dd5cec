//! Tasks and results on the wire, to and from the algorithm boundary's types
//! ([`shoal_shared::models::phase`]): what a server half asks ([`Request`], [`Payload`]) becomes a
//! [`v1::Task`]'s kind and model fields; a [`v1::TaskResult`] becomes a [`Reply`] for the server
//! half; on the client, a task's kind becomes [`Work`] and an [`Answer`] becomes an outcome.

use shoal_shared::models::phase::{
    Answer, DecodeBounds, FitReply, HistogramReply, HistogramRequest, Payload, Rejection, Reply,
    Request, SketchReply, Work,
};

use shoal_shared::models::forest::Forest;
use shoal_shared::models::gbdt::{Ensemble, QuantileSketch};

use crate::trees::boost_tree_from_wire;
use crate::v1::{self, task, task_result};
use crate::{
    invalid, local_from_wire, update_from_wire, weights_from_wire, weights_to_wire, WireError,
};
use shoal_shared::tensor::Weights;

/// What a task carries of the global model: tensors, a forest or a boosted ensemble.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskPayload {
    pub parameters: Option<v1::Parameters>,
    pub forest: Option<v1::Forest>,
    pub ensemble: Option<v1::Ensemble>,
}

impl From<Payload> for TaskPayload {
    /// Encodes the model once per phase; every task of the phase clones the encoded form (tensor
    /// bytes are shared, tree messages are copied).
    fn from(payload: Payload) -> Self {
        match payload {
            Payload::None => TaskPayload::default(),
            Payload::Weights(w) => TaskPayload {
                parameters: Some(weights_to_wire(&w)),
                ..Default::default()
            },
            Payload::Forest(f) => TaskPayload {
                forest: Some(v1::Forest::from(f.as_ref())),
                ..Default::default()
            },
            Payload::Ensemble(e) => TaskPayload {
                ensemble: Some(v1::Ensemble::from(e.as_ref())),
                ..Default::default()
            },
        }
    }
}

/// A task's model fields as the client half reads them; tensors are decoded without a bound
/// beyond the message size (the coordinator is trusted to send its own model), and trees are
/// checked against the client's data by the client half.
pub fn payload_from_wire(task: &v1::Task) -> Result<Payload, WireError> {
    Ok(match (&task.parameters, &task.forest, &task.ensemble) {
        (Some(p), None, None) => {
            Payload::Weights(std::sync::Arc::new(weights_from_wire(p, usize::MAX)?))
        }
        (None, Some(f), None) => Payload::Forest(std::sync::Arc::new(Forest::try_from(f.clone())?)),
        (None, None, Some(e)) => {
            Payload::Ensemble(std::sync::Arc::new(Ensemble::try_from(e.clone())?))
        }
        (None, None, None) => Payload::None,
        _ => {
            return Err(invalid(
                "task",
                "carries more than one of parameters, forest and ensemble",
            ))
        }
    })
}

/// A phase's request as a task kind; a fit task carries the round's local training settings.
pub fn request_to_wire(request: Request, local: v1::LocalTraining) -> task::Kind {
    match request {
        Request::Fit { control } => task::Kind::Fit(v1::FitTask {
            local: Some(local),
            control: control.as_ref().map(weights_to_wire),
            ..Default::default()
        }),
        Request::Sketch => task::Kind::Sketch(v1::SketchTask {}),
        Request::Histogram(h) => task::Kind::Histogram(v1::HistogramTask {
            output: h.output,
            partial_tree: Some(v1::BoostTree::from(&h.partial_tree)),
            nodes: h.nodes,
            first_level: h.first_level,
        }),
    }
}

/// The reply a phase waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Fit,
    Sketch,
    Histogram,
}

impl ReplyKind {
    /// As rejections name it ("expected a fit result").
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyKind::Fit => "a fit result",
            ReplyKind::Sketch => "a sketch",
            ReplyKind::Histogram => "histograms",
        }
    }
}

/// A task's kind as capabilities name it.
pub fn task_kind(kind: &task::Kind) -> shoal_shared::models::phase::TaskKind {
    use shoal_shared::models::phase::TaskKind;
    match kind {
        task::Kind::Fit(_) => TaskKind::Fit,
        task::Kind::Evaluate(_) => TaskKind::Evaluate,
        task::Kind::Sketch(_) => TaskKind::Sketch,
        task::Kind::Histogram(_) => TaskKind::Histogram,
        task::Kind::GetParameters(_) => TaskKind::Parameters,
    }
}

/// What a phase's replies must be.
pub fn expected_reply(request: &Request) -> ReplyKind {
    match request {
        Request::Fit { .. } => ReplyKind::Fit,
        Request::Sketch => ReplyKind::Sketch,
        Request::Histogram(_) => ReplyKind::Histogram,
    }
}

/// A task result as the server half reads it: a client's error or a reply of another kind than
/// `expected` is refused before anything is decoded; then tensors are decoded within `bounds`
/// (those it does not want are ignored), and trees, sketches and histograms as they are, for the
/// server half to check against the job. A compressed update (`delta`) is added to `base`, the
/// weights the task sent; without them it is refused.
pub fn reply_from_wire(
    outcome: Option<task_result::Outcome>,
    bounds: DecodeBounds,
    expected: ReplyKind,
    base: Option<&Weights>,
) -> Result<Reply, Rejection> {
    let kind = match &outcome {
        Some(task_result::Outcome::Error(e)) => return Err(Rejection::ClientError(e.clone())),
        Some(task_result::Outcome::Fit(_)) => Some(ReplyKind::Fit),
        Some(task_result::Outcome::Sketch(_)) => Some(ReplyKind::Sketch),
        Some(task_result::Outcome::Histogram(_)) => Some(ReplyKind::Histogram),
        Some(task_result::Outcome::Evaluate(_) | task_result::Outcome::Parameters(_)) | None => {
            None
        }
    };
    if kind != Some(expected) {
        return Err(Rejection::WrongKind(expected.as_str()));
    }
    Ok(match outcome {
        Some(task_result::Outcome::Fit(f)) => {
            let (parameters, control_delta) = match bounds.max_elements {
                Some(max) => {
                    let parameters = match (&f.parameters, f.delta, base) {
                        (None, _, _) => None,
                        (Some(p), false, _) => Some(weights_from_wire(p, max)),
                        // The base is the coordinator's own model, within the bound already.
                        (Some(p), true, Some(base)) => Some(update_from_wire(p, base)),
                        (Some(_), true, None) => {
                            return Err(Rejection::invalid(invalid(
                                "delta",
                                "a compressed update answers a task that sent no parameters",
                            )))
                        }
                    }
                    .transpose()
                    .map_err(Rejection::invalid)?;
                    let control_delta = match (&f.control_delta, bounds.control) {
                        (Some(c), true) => Some(
                            weights_from_wire(c, max)
                                .map_err(|e| Rejection::invalid_in("control_delta: ", e))?,
                        ),
                        _ => None,
                    };
                    (parameters, control_delta)
                }
                None => (None, None),
            };
            Reply::Fit(FitReply {
                num_examples: f.num_examples,
                train_loss: f.train_loss,
                parameters,
                control_delta,
                trees: f
                    .trees
                    .map(Forest::try_from)
                    .transpose()
                    .map_err(Rejection::invalid)?,
            })
        }
        Some(task_result::Outcome::Sketch(s)) => Reply::Sketch(SketchReply {
            sketch: QuantileSketch::try_from(
                s.sketch
                    .ok_or(Rejection::Missing("sketch result without a sketch"))?,
            )
            .map_err(Rejection::invalid)?,
            num_examples: s.num_examples,
        }),
        Some(task_result::Outcome::Histogram(h)) => Reply::Histogram(HistogramReply {
            histograms: h.histograms.into_iter().map(|n| n.values).collect(),
            num_examples: h.num_examples,
            train_loss: h.train_loss,
        }),
        Some(
            task_result::Outcome::Error(_)
            | task_result::Outcome::Evaluate(_)
            | task_result::Outcome::Parameters(_),
        )
        | None => return Err(Rejection::WrongKind(expected.as_str())),
    })
}

impl TryFrom<&task::Kind> for Work {
    type Error = WireError;

    /// What a task asks, as the client halves read it.
    fn try_from(kind: &task::Kind) -> Result<Self, WireError> {
        Ok(match kind {
            task::Kind::Fit(fit) => Work::Fit {
                local: local_from_wire(fit.local.as_ref())?,
                control: fit
                    .control
                    .as_ref()
                    .map(|c| weights_from_wire(c, usize::MAX))
                    .transpose()?,
            },
            task::Kind::Evaluate(eval) => Work::Evaluate {
                personalize: if eval.personalize_epochs > 0 {
                    let mut cfg = local_from_wire(eval.local.as_ref())?;
                    cfg.epochs = eval.personalize_epochs;
                    Some(cfg)
                } else {
                    None
                },
            },
            task::Kind::Sketch(_) => Work::Sketch,
            task::Kind::Histogram(h) => Work::Histogram(HistogramRequest {
                output: h.output,
                partial_tree: boost_tree_from_wire(
                    h.partial_tree
                        .clone()
                        .ok_or(WireError::Missing("histogram.partial_tree"))?,
                    "histogram.partial_tree",
                )?,
                nodes: h.nodes.clone(),
                first_level: h.first_level,
            }),
            // Answered by a trainer of the client's own (an external model), never by a model
            // kind's client half.
            task::Kind::GetParameters(_) => {
                return Err(invalid(
                    "task",
                    "get_parameters is for external models, whose client code gives them",
                ))
            }
        })
    }
}

impl From<Answer> for task_result::Outcome {
    fn from(answer: Answer) -> Self {
        match answer {
            Answer::Reply(Reply::Fit(fit)) => task_result::Outcome::Fit(v1::FitResult {
                parameters: fit.parameters.as_ref().map(weights_to_wire),
                num_examples: fit.num_examples,
                train_loss: fit.train_loss,
                control_delta: fit.control_delta.as_ref().map(weights_to_wire),
                trees: fit.trees.as_ref().map(v1::Forest::from),
                delta: false,
            }),
            Answer::Reply(Reply::Sketch(s)) => task_result::Outcome::Sketch(v1::SketchResult {
                sketch: Some(v1::QuantileSketch::from(&s.sketch)),
                num_examples: s.num_examples,
            }),
            Answer::Reply(Reply::Histogram(h)) => {
                task_result::Outcome::Histogram(v1::HistogramResult {
                    histograms: h
                        .histograms
                        .into_iter()
                        .map(|values| v1::NodeHistogram { values })
                        .collect(),
                    num_examples: h.num_examples,
                    train_loss: h.train_loss,
                })
            }
            Answer::Evaluated(e) => task_result::Outcome::Evaluate(v1::EvaluateResult {
                num_examples: e.num_examples,
                loss: e.loss,
                accuracy: e.accuracy,
                classes_present: e.classes_present,
                personalized_accuracy: e.personalized_accuracy,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_shared::models::gbdt::GTree;
    use shoal_shared::tensor::{Tensor, Weights};

    fn w() -> Weights {
        Weights::new(vec![Tensor::new("b", vec![2], vec![1.0, -2.0]).unwrap()])
    }

    #[test]
    fn requests_answers_and_replies_cross_the_wire_unchanged() {
        let local = crate::local_to_wire(&Default::default(), 0.1, 0.0);
        let h = HistogramRequest {
            output: 1,
            partial_tree: GTree::root(),
            nodes: vec![0],
            first_level: true,
        };
        let kind = request_to_wire(Request::Histogram(h.clone()), local);
        let Work::Histogram(back) = Work::try_from(&kind).unwrap() else {
            panic!("a histogram task is histogram work")
        };
        assert_eq!(back, h);
        let kind = request_to_wire(Request::Fit { control: Some(w()) }, local);
        let Work::Fit { control, local } = Work::try_from(&kind).unwrap() else {
            panic!("a fit task is fit work")
        };
        assert_eq!((control, local.lr), (Some(w()), 0.1));

        let fit = FitReply {
            num_examples: 3,
            train_loss: 0.5,
            parameters: Some(w()),
            control_delta: Some(w()),
            trees: Some(shoal_shared::models::forest::Forest::new(2, 3)),
        };
        let outcome = task_result::Outcome::from(Answer::Reply(Reply::Fit(fit.clone())));
        let bounds = DecodeBounds {
            max_elements: Some(2),
            control: true,
        };
        assert_eq!(
            reply_from_wire(Some(outcome.clone()), bounds, ReplyKind::Fit, None).unwrap(),
            Reply::Fit(fit.clone())
        );
        // Tensors a server half does not want are ignored; tensors beyond its bound are refused.
        let unwanted = DecodeBounds {
            max_elements: None,
            control: false,
        };
        let Reply::Fit(f) =
            reply_from_wire(Some(outcome.clone()), unwanted, ReplyKind::Fit, None).unwrap()
        else {
            panic!("a fit result is a fit reply")
        };
        assert_eq!(
            (f.parameters, f.control_delta, f.trees),
            (None, None, Some(Forest::new(2, 3)))
        );
        let small = DecodeBounds {
            max_elements: Some(1),
            control: false,
        };
        assert!(matches!(
            reply_from_wire(Some(outcome), small, ReplyKind::Fit, None),
            Err(Rejection::Invalid { .. })
        ));
        assert_eq!(
            reply_from_wire(None, bounds, ReplyKind::Sketch, None)
                .unwrap_err()
                .to_string(),
            "expected a sketch"
        );
        assert_eq!(
            reply_from_wire(
                Some(task_result::Outcome::Error("disk full".into())),
                bounds,
                ReplyKind::Fit,
                None
            )
            .unwrap_err()
            .to_string(),
            "client error: disk full"
        );
    }

    #[test]
    fn payloads_round_trip() {
        let mut ensemble = Ensemble::new(
            1,
            2,
            shoal_shared::models::gbdt::BinEdges {
                edges: vec![vec![0.5]],
            },
        );
        ensemble.rounds.push(vec![GTree::root()]);
        for p in [
            Payload::None,
            Payload::Weights(std::sync::Arc::new(w())),
            Payload::Forest(std::sync::Arc::new(Forest::new(4, 2))),
            Payload::Ensemble(std::sync::Arc::new(ensemble)),
        ] {
            let wire = TaskPayload::from(p.clone());
            let task = v1::Task {
                parameters: wire.parameters,
                forest: wire.forest,
                ensemble: wire.ensemble,
                ..Default::default()
            };
            assert_eq!(payload_from_wire(&task).unwrap(), p);
        }
        let both = v1::Task {
            parameters: Some(weights_to_wire(&w())),
            forest: Some(v1::Forest::default()),
            ..Default::default()
        };
        assert!(payload_from_wire(&both)
            .unwrap_err()
            .to_string()
            .contains("more than one"));
    }

    #[test]
    fn a_sketch_result_without_its_sketch_is_refused_and_the_kind_comes_first() {
        let outcome = task_result::Outcome::Sketch(v1::SketchResult {
            sketch: None,
            num_examples: 3,
        });
        assert!(matches!(
            reply_from_wire(
                Some(outcome.clone()),
                DecodeBounds::NONE,
                ReplyKind::Sketch,
                None
            ),
            Err(Rejection::Missing(_))
        ));
        // Sent to a phase that waits for another kind, it is refused as the wrong kind before
        // its content is looked at.
        assert_eq!(
            reply_from_wire(Some(outcome), DecodeBounds::NONE, ReplyKind::Fit, None)
                .unwrap_err()
                .to_string(),
            "expected a fit result"
        );
    }
}
