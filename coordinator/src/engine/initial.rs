//! An external model's initial parameters from outside the job (`[model] init = "file"` or
//! `"client"`, as Flower takes `initial_parameters` or asks one client): found before round 1,
//! kept in the state store beside the job, and given to the server half in place of a seeded
//! initialisation. A resumed job finds them in the store and never asks again.

use std::sync::Arc;

use prost::Message;
use shoal_proto::v1::{self, task, task_result};
use shoal_shared::models::external::{ExternalInit, ExternalSpec};
use shoal_shared::models::phase::{Rejection, TaskKind};
use shoal_shared::models::ModelSpec;
use shoal_shared::seed;
use shoal_shared::tensor::Weights;
use tracing::info;

use super::round::{DataFacts, JobCtx};
use crate::error::{Error, Result};
use crate::Coordinator;

/// Seed part of the choice of the client asked for initial parameters.
const SEED_INITIAL_CLIENT: u64 = 5;

/// Initial parameters as the store keeps them: a `shoal.v1.Parameters` message (tensor order
/// kept, raw little-endian f32).
pub fn encode(w: &Weights) -> Vec<u8> {
    shoal_proto::weights_to_wire(w).encode_to_vec()
}

fn decode(bytes: &[u8], max_elements: usize) -> Result<Weights> {
    let p = v1::Parameters::decode(bytes)
        .map_err(|e| Error::Job(format!("the stored initial parameters are unreadable: {e}")))?;
    shoal_proto::weights_from_wire(&p, max_elements)
        .map_err(|e| Error::Job(format!("the stored initial parameters are unusable: {e}")))
}

impl Coordinator {
    /// `ctx` with its initial parameters, when its model takes them from a file (stored at
    /// submission) or a client (asked now, once, then stored); the spec's tensors are filled
    /// from them where it lists none. Other jobs are returned as they are.
    pub(crate) async fn with_initial(&self, ctx: &JobCtx, facts: &DataFacts) -> Result<JobCtx> {
        let Some(ext) = ctx.spec.model.external().filter(|e| e.takes_initial()) else {
            return Ok(ctx.clone());
        };
        let given = match self.store.initial(&ctx.id)? {
            Some(bytes) => decode(&bytes, ctx.max_tensor_elements)?,
            None if ext.init == ExternalInit::Client => {
                let w = ctx.ask_initial(ext, facts).await?;
                self.store.save_initial(&ctx.id, &encode(&w))?;
                w
            }
            None => return Err(Error::Job(
                "model.init = \"file\": the state store holds no initial parameters for this job"
                    .into(),
            )),
        };
        let (ext, weights) = ext.adopt(given)?;
        let mut spec = ctx.spec.clone().into_spec();
        spec.model = ModelSpec::External(ext);
        Ok(JobCtx {
            spec: spec.check()?,
            initial: Some(Arc::new(weights)),
            ..ctx.clone()
        })
    }
}

impl JobCtx {
    /// Asks one client that offers them (task kind `parameters`), chosen by the job's seed, for
    /// the model's initial parameters; they must fit `ext` and the size limit.
    async fn ask_initial(&self, ext: &ExternalSpec, facts: &DataFacts) -> Result<Weights> {
        let mut offering: Vec<String> = self
            .candidates(&[TaskKind::Parameters])
            .into_iter()
            .map(|c| c.name)
            .collect();
        offering.sort();
        if offering.is_empty() {
            return Err(Error::Job(format!(
                "model.init = \"client\": none of the clients holding `{}` offers initial parameters (task kind `parameters`: the Python SDK's Client.get_parameters, a Rust Trainer's initial_parameters)",
                self.spec.dataset
            )));
        }
        let pick = seed::derive(self.spec.seed, &[SEED_INITIAL_CLIENT]) % offering.len() as u64;
        let client = offering[pick as usize].clone();
        let mut got: Option<Weights> = None;
        let mut refusal = None;
        let max = self.max_tensor_elements;
        let phase = self
            .phase_until(
                0,
                &[client.as_str()],
                &Default::default(),
                facts,
                task::Kind::GetParameters(v1::ParametersTask {}),
                1,
                Some(1),
                |_, arrived| {
                    let verdict = match arrived.result.outcome {
                        Some(task_result::Outcome::Parameters(p)) => p
                            .parameters
                            .as_ref()
                            .ok_or(Rejection::Missing("parameters result without parameters"))
                            .and_then(|p| {
                                shoal_proto::weights_from_wire(p, max).map_err(Rejection::invalid)
                            })
                            .and_then(|w| {
                                w.check_finite().map_err(Rejection::invalid)?;
                                ext.adopt(w.clone()).map_err(Rejection::invalid)?;
                                got = Some(w);
                                Ok(())
                            }),
                        Some(task_result::Outcome::Error(e)) => Err(Rejection::ClientError(e)),
                        _ => Err(Rejection::WrongKind("initial parameters")),
                    };
                    if let Err(r) = &verdict {
                        refusal = Some(r.to_string());
                    }
                    verdict
                },
            )
            .await?;
        match got {
            Some(w) => {
                info!(client = %client, tensors = w.tensors.len(), parameters = w.num_params(), "initial parameters from a client");
                Ok(w)
            }
            None => Err(Error::Job(format!(
                "model.init = \"client\": `{client}` gave no usable initial parameters ({})",
                refusal.unwrap_or_else(|| if phase.failed > 0 {
                    "it left before answering".into()
                } else {
                    "no answer before the round timeout".into()
                })
            ))),
        }
    }
}
