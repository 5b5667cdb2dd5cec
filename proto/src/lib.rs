//! `shoal-proto`: Shoal's wire protocol, package `shoal.v1`.
//!
//! Generated types live in [`v1`]; the two services are [`v1::federation_server::Federation`]
//! (clients' long-lived `Connect` stream) and [`v1::jobs_server::Jobs`] (operators' job API).
//! Conversions between wire and domain types live here, next to the wire types:
//! [`weights_to_wire`] / [`weights_from_wire`] for tensors, [`model_to_wire`] / [`model_from_wire`],
//! [`local_to_wire`] / [`local_from_wire`], compressed updates ([`update_to_wire`] /
//! [`update_from_wire`]), and in [`tasks`] the tasks and results of the
//! algorithm boundary. A malformed message becomes a [`WireError`] naming the field, never a
//! panic.
//!
//! # Example
//! ```
//! use shoal_shared::tensor::{Tensor, Weights};
//! let w = Weights::new(vec![Tensor::new("bias", vec![2], vec![0.5, -1.0]).unwrap()]);
//! let wire = shoal_proto::weights_to_wire(&w);
//! assert_eq!(wire.tensors[0].data.len(), 8); // two little-endian f32
//! assert_eq!(shoal_proto::weights_from_wire(&wire, usize::MAX).unwrap(), w);
//! ```

use shoal_shared::compress::{decode_add, Compression, EncodedTensor, Encoding};
use shoal_shared::models::diffusion::{DenoiserSpec, Schedule};
use shoal_shared::models::sgd::LocalConfig;
use shoal_shared::models::ModelSpec;
use shoal_shared::tensor::{Tensor, Weights};

pub mod chunk;
pub mod tasks;
pub mod trees;

/// Generated code for package `shoal.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}

/// The protocol version this build speaks. A `Hello` with another version is rejected.
///
/// Version 2 sends tree models (forests, boosted ensembles, partial trees, quantile sketches,
/// histograms) as typed messages (`shoal/v1/trees.proto`); version 1 sent them as JSON in bytes
/// fields, which version 2 reserves.
pub const PROTOCOL_VERSION: u32 = 2;

/// A wire message that cannot become a domain value.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("invalid field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> WireError {
    WireError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Encodes weights as raw little-endian `f32` tensors.
pub fn weights_to_wire(w: &Weights) -> v1::Parameters {
    v1::Parameters {
        tensors: w
            .tensors
            .iter()
            .map(|t| {
                let mut data = Vec::with_capacity(t.data.len() * 4);
                for v in &t.data {
                    data.extend_from_slice(&v.to_le_bytes());
                }
                v1::Tensor {
                    name: t.name.clone(),
                    dtype: v1::Dtype::F32 as i32,
                    shape: t.shape.iter().map(|&d| d as u64).collect(),
                    data: data.into(),
                }
            })
            .collect(),
    }
}

/// Decodes wire tensors, checking dtype, that the byte length matches the shape, and that the
/// total element count stays within `max_elements`.
pub fn weights_from_wire(p: &v1::Parameters, max_elements: usize) -> Result<Weights, WireError> {
    let mut total = 0usize;
    let mut tensors = Vec::with_capacity(p.tensors.len());
    for (i, t) in p.tensors.iter().enumerate() {
        let field = || format!("parameters.tensors[{i}] (`{}`)", t.name);
        if t.dtype != v1::Dtype::F32 as i32 {
            return Err(invalid(
                field(),
                format!("dtype {} is not supported (expected F32)", t.dtype),
            ));
        }
        let mut n = 1usize;
        let mut shape = Vec::with_capacity(t.shape.len());
        for &d in &t.shape {
            let d = usize::try_from(d).map_err(|_| invalid(field(), "dimension too large"))?;
            n = n
                .checked_mul(d)
                .ok_or_else(|| invalid(field(), "shape overflows"))?;
            shape.push(d);
        }
        total = total.saturating_add(n);
        if total > max_elements {
            return Err(invalid(
                field(),
                format!("more than {max_elements} elements in total"),
            ));
        }
        if Some(t.data.len()) != n.checked_mul(4) {
            return Err(invalid(
                field(),
                format!(
                    "{} bytes do not hold shape {:?} of f32 ({} bytes expected)",
                    t.data.len(),
                    shape,
                    n.saturating_mul(4)
                ),
            ));
        }
        let data = t
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.push(Tensor {
            name: t.name.clone(),
            shape,
            data,
        });
    }
    Ok(Weights::new(tensors))
}

/// A job's update compression as a fit task asks for it: the enum and top-k's fraction.
pub fn compression_to_wire(c: Compression) -> (v1::Compression, f64) {
    match c {
        Compression::None => (v1::Compression::None, 0.0),
        Compression::F16 => (v1::Compression::F16, 0.0),
        Compression::Bf16 => (v1::Compression::Bf16, 0.0),
        Compression::Int8 => (v1::Compression::Int8, 0.0),
        Compression::TopK { fraction } => (v1::Compression::Topk, fraction),
    }
}

/// The compression a fit task asks for.
pub fn compression_from_wire(fit: &v1::FitTask) -> Result<Compression, WireError> {
    Ok(match v1::Compression::try_from(fit.compression) {
        Ok(v1::Compression::None) => Compression::None,
        Ok(v1::Compression::F16) => Compression::F16,
        Ok(v1::Compression::Bf16) => Compression::Bf16,
        Ok(v1::Compression::Int8) => Compression::Int8,
        Ok(v1::Compression::Topk) => Compression::parse("topk", fit.topk_fraction)
            .map_err(|e| invalid("fit.topk_fraction", e.to_string()))?,
        Err(_) => {
            return Err(invalid(
                "fit.compression",
                format!("{} is not a compression this client knows", fit.compression),
            ))
        }
    })
}

/// A compressed update's tensors on the wire (`FitResult.parameters` with `delta` set).
pub fn update_to_wire(update: Vec<EncodedTensor>) -> v1::Parameters {
    v1::Parameters {
        tensors: update
            .into_iter()
            .map(|t| v1::Tensor {
                name: t.name,
                dtype: dtype_of(t.value.encoding) as i32,
                shape: t.shape.iter().map(|&d| d as u64).collect(),
                data: t.value.data.into(),
            })
            .collect(),
    }
}

fn dtype_of(e: Encoding) -> v1::Dtype {
    match e {
        Encoding::F32 => v1::Dtype::F32,
        Encoding::F16 => v1::Dtype::F16,
        Encoding::Bf16 => v1::Dtype::Bf16,
        Encoding::Q8 => v1::Dtype::Q8,
        Encoding::TopK => v1::Dtype::Topk,
    }
}

/// Decodes a compressed update: each tensor's change, in any encoding, added to the same tensor
/// of `base` (the model the task sent), which the update must match name for name and shape for
/// shape. The result is the client's new parameters, as [`weights_from_wire`] would give them.
pub fn update_from_wire(p: &v1::Parameters, base: &Weights) -> Result<Weights, WireError> {
    if p.tensors.len() != base.tensors.len() {
        return Err(invalid(
            "parameters",
            format!(
                "a compressed update has {} tensors; the task's model has {}",
                p.tensors.len(),
                base.tensors.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(base.tensors.len());
    for (i, (t, b)) in p.tensors.iter().zip(&base.tensors).enumerate() {
        let field = || format!("parameters.tensors[{i}] (`{}`)", t.name);
        let same_shape = t.shape.len() == b.shape.len()
            && t.shape.iter().zip(&b.shape).all(|(&w, &d)| w == d as u64);
        if t.name != b.name || !same_shape {
            return Err(invalid(
                field(),
                format!(
                    "shape {:?} does not match the task's tensor `{}` {:?}",
                    t.shape, b.name, b.shape
                ),
            ));
        }
        let encoding = match v1::Dtype::try_from(t.dtype) {
            Ok(v1::Dtype::F32) => Encoding::F32,
            Ok(v1::Dtype::F16) => Encoding::F16,
            Ok(v1::Dtype::Bf16) => Encoding::Bf16,
            Ok(v1::Dtype::Q8) => Encoding::Q8,
            Ok(v1::Dtype::Topk) => Encoding::TopK,
            Ok(v1::Dtype::Unspecified) | Err(_) => {
                return Err(invalid(
                    field(),
                    format!("dtype {} is not supported", t.dtype),
                ))
            }
        };
        let mut data = b.data.clone();
        decode_add(encoding, &t.data, &mut data).map_err(|e| invalid(field(), e.to_string()))?;
        out.push(Tensor {
            name: b.name.clone(),
            shape: b.shape.clone(),
            data,
        });
    }
    Ok(Weights::new(out))
}

pub fn model_to_wire(m: &ModelSpec) -> v1::ModelSpec {
    v1::ModelSpec {
        kind: m.name().to_string(),
        hidden: m.hidden().iter().map(|&h| h as u32).collect(),
        forest: m.forest().map(|p| v1::ForestParams {
            trees_per_round: p.trees_per_round,
            max_depth: p.max_depth,
            min_samples_split: p.min_samples_split,
            min_samples_leaf: p.min_samples_leaf,
            max_features: p.max_features,
            max_trees: p.max_trees,
        }),
        gbdt: m.gbdt().map(|p| v1::GbdtParams {
            max_depth: p.max_depth,
            max_bins: p.max_bins,
            learning_rate: p.learning_rate,
            lambda: p.lambda,
            gamma: p.gamma,
            min_child_weight: p.min_child_weight,
            sketch_size: p.sketch_size,
        }),
        denoiser: m.denoiser().map(|p| {
            let (schedule, beta_start, beta_end, s) = match p.schedule {
                Schedule::Linear {
                    beta_start,
                    beta_end,
                } => ("linear", beta_start, beta_end, 0.0),
                Schedule::Cosine { s } => ("cosine", 0.0, 0.0, s),
            };
            v1::DenoiserParams {
                embed_dim: u32::try_from(p.embed_dim).unwrap_or(u32::MAX),
                steps: u32::try_from(p.steps).unwrap_or(u32::MAX),
                schedule: schedule.into(),
                beta_start,
                beta_end,
                s,
            }
        }),
        external: m.external().map(|e| v1::ExternalParams {
            tensors: e
                .tensors
                .iter()
                .map(|t| v1::TensorSpec {
                    name: t.name.clone(),
                    shape: t.shape.iter().map(|&d| d as u64).collect(),
                    dtype: v1::Dtype::F32 as i32,
                })
                .collect(),
        }),
    }
}

pub fn model_from_wire(m: Option<&v1::ModelSpec>) -> Result<ModelSpec, WireError> {
    let m = m.ok_or(WireError::Missing("model"))?;
    if m.kind == "forest" {
        let p = m
            .forest
            .as_ref()
            .ok_or(WireError::Missing("model.forest"))?;
        let spec = ModelSpec::Forest(shoal_shared::models::forest::ForestParams {
            trees_per_round: p.trees_per_round,
            max_depth: p.max_depth,
            min_samples_split: p.min_samples_split,
            min_samples_leaf: p.min_samples_leaf,
            max_features: p.max_features,
            max_trees: p.max_trees,
        });
        spec.check()
            .map_err(|e| invalid("model.forest", e.to_string()))?;
        return Ok(spec);
    }
    if m.kind == "gbdt" {
        let p = m.gbdt.as_ref().ok_or(WireError::Missing("model.gbdt"))?;
        let spec = ModelSpec::Gbdt(shoal_shared::models::gbdt::GbdtParams {
            max_depth: p.max_depth,
            max_bins: p.max_bins,
            learning_rate: p.learning_rate,
            lambda: p.lambda,
            gamma: p.gamma,
            min_child_weight: p.min_child_weight,
            sketch_size: p.sketch_size,
        });
        spec.check()
            .map_err(|e| invalid("model.gbdt", e.to_string()))?;
        return Ok(spec);
    }
    if m.kind == "external" {
        let p = m
            .external
            .as_ref()
            .ok_or(WireError::Missing("model.external"))?;
        let tensors = p
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let field = || format!("model.external.tensors[{i}]");
                let shape = t
                    .shape
                    .iter()
                    .map(|&d| {
                        usize::try_from(d).map_err(|_| invalid(field(), "dimension too large"))
                    })
                    .collect::<Result<_, _>>()?;
                if t.dtype != v1::Dtype::F32 as i32 {
                    return Err(invalid(field(), format!("dtype {} is not F32", t.dtype)));
                }
                Ok(shoal_shared::models::external::TensorSpec {
                    name: t.name.clone(),
                    shape,
                    dtype: "f32".into(),
                })
            })
            .collect::<Result<_, _>>()?;
        // Initialisation is the coordinator's business; clients get the tensors' layout.
        let spec = ModelSpec::External(shoal_shared::models::external::ExternalSpec {
            tensors,
            ..Default::default()
        });
        spec.check()
            .map_err(|e| invalid("model.external", e.to_string()))?;
        return Ok(spec);
    }
    let hidden: Vec<usize> = m.hidden.iter().map(|&h| h as usize).collect();
    if m.kind == "denoiser" {
        let p = m
            .denoiser
            .as_ref()
            .ok_or(WireError::Missing("model.denoiser"))?;
        let schedule = match p.schedule.as_str() {
            "linear" => Schedule::Linear {
                beta_start: p.beta_start,
                beta_end: p.beta_end,
            },
            "cosine" => Schedule::Cosine { s: p.s },
            other => {
                return Err(invalid(
                    "model.denoiser.schedule",
                    format!("`{other}` is not linear or cosine"),
                ))
            }
        };
        let spec = ModelSpec::Denoiser(DenoiserSpec {
            hidden,
            embed_dim: p.embed_dim as usize,
            steps: p.steps as usize,
            schedule,
        });
        spec.check()
            .map_err(|e| invalid("model.denoiser", e.to_string()))?;
        return Ok(spec);
    }
    ModelSpec::from_parts(&m.kind, &hidden).map_err(|e| invalid("model", e.to_string()))
}

/// Local settings for one round: the learning rate is the round's (decay applied), FedProx's mu
/// as given.
pub fn local_to_wire(c: &LocalConfig, lr: f64, proximal_mu: f64) -> v1::LocalTraining {
    v1::LocalTraining {
        epochs: c.epochs,
        batch_size: c.batch_size,
        lr,
        momentum: c.momentum,
        weight_decay: c.weight_decay,
        proximal_mu,
    }
}

pub fn local_from_wire(c: Option<&v1::LocalTraining>) -> Result<LocalConfig, WireError> {
    let c = c.ok_or(WireError::Missing("local"))?;
    let cfg = LocalConfig {
        epochs: c.epochs,
        batch_size: c.batch_size,
        lr: c.lr,
        momentum: c.momentum,
        weight_decay: c.weight_decay,
        proximal_mu: c.proximal_mu,
        lr_decay: 1.0,
    };
    cfg.check().map_err(|e| invalid("local", e.to_string()))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Weights {
        Weights::new(vec![
            Tensor::new(
                "weight",
                vec![2, 3],
                vec![1.0, -2.5, 3.25, 0.0, f32::MIN, f32::MAX],
            )
            .unwrap(),
            Tensor::new("bias", vec![3], vec![0.1, 0.2, 0.3]).unwrap(),
        ])
    }

    #[test]
    fn weights_round_trip_bit_exact() {
        let w = sample();
        assert_eq!(weights_from_wire(&weights_to_wire(&w), 100).unwrap(), w);
    }

    #[test]
    fn truncated_bytes_are_rejected_with_the_tensor_name() {
        let mut p = weights_to_wire(&sample());
        p.tensors[1].data.truncate(11);
        let err = weights_from_wire(&p, 100).unwrap_err().to_string();
        assert!(err.contains("`bias`"), "{err}");
    }

    #[test]
    fn wrong_dtype_and_too_many_elements_are_rejected() {
        let mut p = weights_to_wire(&sample());
        p.tensors[0].dtype = 0;
        assert!(weights_from_wire(&p, 100).is_err());
        let p = weights_to_wire(&sample());
        assert!(weights_from_wire(&p, 8)
            .unwrap_err()
            .to_string()
            .contains("8 elements"));
    }

    #[test]
    fn overflowing_shape_is_rejected() {
        let mut p = weights_to_wire(&sample());
        p.tensors[0].shape = vec![u64::MAX, 2];
        assert!(weights_from_wire(&p, usize::MAX).is_err());
    }

    #[test]
    fn model_and_local_round_trip() {
        for m in [
            ModelSpec::default(),
            ModelSpec::Mlp(shoal_shared::models::sgd::MlpSpec {
                hidden: vec![128, 64],
            }),
            ModelSpec::Denoiser(DenoiserSpec::default()),
            ModelSpec::Denoiser(DenoiserSpec {
                hidden: vec![64, 32],
                embed_dim: 8,
                steps: 1000,
                schedule: Schedule::Linear {
                    beta_start: 1e-4,
                    beta_end: 0.02,
                },
            }),
        ] {
            assert_eq!(model_from_wire(Some(&model_to_wire(&m))).unwrap(), m);
        }
        let bad_model = v1::ModelSpec {
            kind: "mlp".into(),
            hidden: vec![],
            forest: None,
            gbdt: None,
            denoiser: None,
            external: None,
        };
        assert!(model_from_wire(Some(&bad_model)).is_err());
        // An external model crosses with its tensor list (initialisation is the coordinator's).
        let external = ModelSpec::External(shoal_shared::models::external::ExternalSpec {
            tensors: vec![shoal_shared::models::external::TensorSpec {
                name: "w".into(),
                shape: vec![3, 2],
                dtype: "f32".into(),
            }],
            ..Default::default()
        });
        assert_eq!(
            model_from_wire(Some(&model_to_wire(&external))).unwrap(),
            external
        );
        let mut no_tensors = model_to_wire(&external);
        no_tensors.external = None;
        assert!(model_from_wire(Some(&no_tensors))
            .unwrap_err()
            .to_string()
            .contains("model.external"));
        let mut bad_denoiser = model_to_wire(&ModelSpec::Denoiser(DenoiserSpec::default()));
        bad_denoiser.denoiser.as_mut().unwrap().schedule = "quadratic".into();
        assert!(model_from_wire(Some(&bad_denoiser))
            .unwrap_err()
            .to_string()
            .contains("quadratic"));
        bad_denoiser.denoiser = None;
        assert!(model_from_wire(Some(&bad_denoiser)).is_err());
        let c = LocalConfig {
            momentum: 0.9,
            weight_decay: 1e-4,
            proximal_mu: 0.01,
            ..LocalConfig::default()
        };
        assert_eq!(
            local_from_wire(Some(&local_to_wire(&c, c.lr, c.proximal_mu))).unwrap(),
            c
        );
        let bad = v1::LocalTraining {
            epochs: 0,
            batch_size: 1,
            lr: 0.1,
            ..Default::default()
        };
        assert!(local_from_wire(Some(&bad))
            .unwrap_err()
            .to_string()
            .contains("epochs"));
        assert!(model_from_wire(None).is_err());
    }

    #[test]
    fn a_compressed_update_adds_back_to_the_tasks_model_and_must_match_it() {
        use shoal_shared::compress::{encode_update, ErrorFeedback};
        let base = sample_finite();
        let mut local = base.clone();
        for v in local.values_mut() {
            *v += 0.25;
        }
        for c in [Compression::F16, Compression::Bf16] {
            let update = encode_update(&base, &local, c, 1, &mut ErrorFeedback::default()).unwrap();
            let wire = update_to_wire(update);
            assert_eq!(wire.tensors[0].data.len(), 12, "{c:?}: 2 bytes a value");
            // 0.25 is exact in both half types, so the sum is the local model.
            assert_eq!(update_from_wire(&wire, &base).unwrap(), local);
        }
        let wire = update_to_wire(
            encode_update(
                &base,
                &local,
                Compression::Int8,
                1,
                &mut ErrorFeedback::default(),
            )
            .unwrap(),
        );
        let mut renamed = wire.clone();
        renamed.tensors[1].name = "other".into();
        assert!(update_from_wire(&renamed, &base)
            .unwrap_err()
            .to_string()
            .contains("does not match the task's tensor `bias`"));
        let mut reshaped = wire.clone();
        reshaped.tensors[0].shape = vec![3, 2];
        assert!(update_from_wire(&reshaped, &base).is_err());
        let mut short = wire.clone();
        short.tensors.pop();
        assert!(update_from_wire(&short, &base)
            .unwrap_err()
            .to_string()
            .contains("has 1 tensors; the task's model has 2"));
        let mut unknown = wire.clone();
        unknown.tensors[0].dtype = 99;
        assert!(update_from_wire(&unknown, &base)
            .unwrap_err()
            .to_string()
            .contains("dtype 99"));
        let mut cut = wire;
        cut.tensors[0].data.truncate(5);
        assert!(update_from_wire(&cut, &base)
            .unwrap_err()
            .to_string()
            .contains("parameters.tensors[0] (`weight`)"));
        // A task's compression crosses the wire; an unknown one is named.
        for c in [
            Compression::None,
            Compression::Int8,
            Compression::TopK { fraction: 0.25 },
        ] {
            let (kind, fraction) = compression_to_wire(c);
            let fit = v1::FitTask {
                compression: kind as i32,
                topk_fraction: fraction,
                ..Default::default()
            };
            assert_eq!(compression_from_wire(&fit).unwrap(), c);
        }
        let fit = v1::FitTask {
            compression: 42,
            ..Default::default()
        };
        assert!(compression_from_wire(&fit)
            .unwrap_err()
            .to_string()
            .contains("fit.compression"));
    }

    fn sample_finite() -> Weights {
        Weights::new(vec![
            Tensor::new("weight", vec![2, 3], vec![1.0, -2.5, 3.25, 0.0, 0.5, 8.0]).unwrap(),
            Tensor::new("bias", vec![3], vec![0.5, 0.25, 0.75]).unwrap(),
        ])
    }
}
