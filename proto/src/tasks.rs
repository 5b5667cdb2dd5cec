//! Tasks and results on the wire, to and from the algorithm boundary's types
//! ([`shoal_shared::models::phase`]): what a server half asks ([`Request`], [`Payload`]) becomes a
//! [`v1::Task`]'s kind and model fields; a [`v1::TaskResult`] becomes a [`Reply`] for the server
//! half; on the client, a task's kind becomes [`Work`] and an [`Answer`] becomes an outcome.

use shoal_shared::models::phase::{
    Answer, DecodeBounds, FitReply, HistogramReply, HistogramRequest, Payload, Rejection, Reply,
    Request, SketchReply, Work,
};

use crate::v1::{self, task, task_result};
use crate::{invalid, local_from_wire, weights_from_wire, weights_to_wire, WireError};

/// What a task carries of the global model: tensors or a blob.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskPayload {
    pub parameters: Option<v1::Parameters>,
    /// Shared by every task of a phase (cloning it copies no bytes).
    pub blob: prost::bytes::Bytes,
}

impl From<Payload> for TaskPayload {
    /// Encodes the tensors once and moves the blob, so every task of a phase shares them.
    fn from(payload: Payload) -> Self {
        match payload {
            Payload::None => TaskPayload::default(),
            Payload::Weights(w) => TaskPayload {
                parameters: Some(weights_to_wire(&w)),
                blob: Default::default(),
            },
            Payload::Blob(b) => TaskPayload {
                parameters: None,
                blob: b.into(),
            },
        }
    }
}

/// A task's model fields as the client half reads them; tensors are decoded without a bound
/// beyond the message size (the coordinator is trusted to send its own model).
pub fn payload_from_wire(
    parameters: Option<&v1::Parameters>,
    blob: &[u8],
) -> Result<Payload, WireError> {
    Ok(match (parameters, blob.is_empty()) {
        (Some(p), _) => Payload::Weights(std::sync::Arc::new(weights_from_wire(p, usize::MAX)?)),
        (None, false) => Payload::Blob(blob.to_vec()),
        (None, true) => Payload::None,
    })
}

/// A phase's request as a task kind; a fit task carries the round's local training settings.
pub fn request_to_wire(
    request: Request,
    local: v1::LocalTraining,
) -> Result<task::Kind, WireError> {
    Ok(match request {
        Request::Fit { control } => task::Kind::Fit(v1::FitTask {
            local: Some(local),
            control: control.as_ref().map(weights_to_wire),
        }),
        Request::Sketch => task::Kind::Sketch(v1::SketchTask {}),
        Request::Histogram(h) => task::Kind::Histogram(v1::HistogramTask {
            output: h.output,
            partial_tree: serde_json::to_vec(&h.partial_tree)
                .map_err(|e| invalid("histogram.partial_tree", e.to_string()))?,
            nodes: h.nodes,
            first_level: h.first_level,
        }),
    })
}

/// What a phase's replies must be, as its rejections say it.
pub fn expected_reply(request: &Request) -> &'static str {
    match request {
        Request::Fit { .. } => "a fit result",
        Request::Sketch => "a sketch",
        Request::Histogram(_) => "histograms",
    }
}

/// A task result as the server half reads it: tensors decoded within `bounds` (those it does not
/// want are ignored), blobs left to it. `expected` names the reply the phase waits for.
pub fn reply_from_wire(
    outcome: Option<task_result::Outcome>,
    bounds: DecodeBounds,
    expected: &'static str,
) -> Result<Reply, Rejection> {
    Ok(match outcome {
        Some(task_result::Outcome::Error(e)) => return Err(Rejection::ClientError(e)),
        Some(task_result::Outcome::Fit(f)) => {
            let (parameters, control_delta) = match bounds.max_elements {
                Some(max) => {
                    let parameters = f
                        .parameters
                        .as_ref()
                        .map(|p| weights_from_wire(p, max))
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
                blob: f.model_blob,
            })
        }
        Some(task_result::Outcome::Sketch(s)) => Reply::Sketch(SketchReply {
            sketch: s.sketch,
            num_examples: s.num_examples,
        }),
        Some(task_result::Outcome::Histogram(h)) => Reply::Histogram(HistogramReply {
            histograms: h.histograms,
            num_examples: h.num_examples,
            train_loss: h.train_loss,
        }),
        Some(task_result::Outcome::Evaluate(_)) | None => {
            return Err(Rejection::WrongKind(expected))
        }
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
                partial_tree: serde_json::from_slice(&h.partial_tree)
                    .map_err(|e| invalid("partial_tree", e.to_string()))?,
                nodes: h.nodes.clone(),
                first_level: h.first_level,
            }),
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
                model_blob: fit.blob,
            }),
            Answer::Reply(Reply::Sketch(s)) => task_result::Outcome::Sketch(v1::SketchResult {
                sketch: s.sketch,
                num_examples: s.num_examples,
            }),
            Answer::Reply(Reply::Histogram(h)) => {
                task_result::Outcome::Histogram(v1::HistogramResult {
                    histograms: h.histograms,
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
        let kind = request_to_wire(Request::Histogram(h.clone()), local).unwrap();
        let Work::Histogram(back) = Work::try_from(&kind).unwrap() else {
            panic!("a histogram task is histogram work")
        };
        assert_eq!(back, h);
        let kind = request_to_wire(Request::Fit { control: Some(w()) }, local).unwrap();
        let Work::Fit { control, local } = Work::try_from(&kind).unwrap() else {
            panic!("a fit task is fit work")
        };
        assert_eq!((control, local.lr), (Some(w()), 0.1));

        let fit = FitReply {
            num_examples: 3,
            train_loss: 0.5,
            parameters: Some(w()),
            control_delta: Some(w()),
            blob: vec![1],
        };
        let outcome = task_result::Outcome::from(Answer::Reply(Reply::Fit(fit.clone())));
        let bounds = DecodeBounds {
            max_elements: Some(2),
            control: true,
        };
        assert_eq!(
            reply_from_wire(Some(outcome.clone()), bounds, "a fit result").unwrap(),
            Reply::Fit(fit.clone())
        );
        // Tensors a server half does not want are ignored; tensors beyond its bound are refused.
        let unwanted = DecodeBounds {
            max_elements: None,
            control: false,
        };
        let Reply::Fit(f) = reply_from_wire(Some(outcome.clone()), unwanted, "").unwrap() else {
            panic!("a fit result is a fit reply")
        };
        assert_eq!(
            (f.parameters, f.control_delta, f.blob),
            (None, None, vec![1])
        );
        let small = DecodeBounds {
            max_elements: Some(1),
            control: false,
        };
        assert!(matches!(
            reply_from_wire(Some(outcome), small, ""),
            Err(Rejection::Invalid { .. })
        ));
        assert_eq!(
            reply_from_wire(None, bounds, "a sketch")
                .unwrap_err()
                .to_string(),
            "expected a sketch"
        );
        assert_eq!(
            reply_from_wire(
                Some(task_result::Outcome::Error("disk full".into())),
                bounds,
                ""
            )
            .unwrap_err()
            .to_string(),
            "client error: disk full"
        );
    }

    #[test]
    fn payloads_round_trip() {
        for p in [
            Payload::None,
            Payload::Weights(std::sync::Arc::new(w())),
            Payload::Blob(vec![7, 8]),
        ] {
            let wire = TaskPayload::from(p.clone());
            assert_eq!(
                payload_from_wire(wire.parameters.as_ref(), &wire.blob).unwrap(),
                p
            );
        }
    }
}
