//! Update compression: how a client's update travels when a job asks for fewer bytes up.
//!
//! A compressed update is the *change* a client made (its new parameters minus the task's), one
//! [`Encoded`] tensor at a time; the coordinator adds the decoded change to the model it sent
//! ([`decode_add`]), so the strategies see full `f32` parameters as before. The codecs
//! ([`Compression`]):
//!
//! - `f16` / `bf16`: each value rounded to nearest (2 bytes a value). bf16 keeps f32's range, f16
//!   keeps three more bits of precision but overflows past 65504.
//! - `int8`: QSGD-style stochastic quantization (Alistarh et al. 2017) per block of
//!   [`Q8_BLOCK`] values: each value becomes an integer in [-127, 127] of the block's largest
//!   magnitude, rounded up or down at random with the probabilities that make the decoded value
//!   *unbiased* (its expectation is the exact value). About 1.02 bytes a value.
//! - `topk`: only the largest-magnitude `fraction` of each tensor's values travels (8 bytes a
//!   kept value: index and value); what was left out is kept by the client and added to its next
//!   update ([`ErrorFeedback`], Stich et al. 2018), so nothing is lost, only delayed.
//!
//! Stochastic rounding draws from the task's seed, so seeded runs reproduce.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::tensor::{Tensor, Weights};
use crate::{Error, Result};

/// Values per int8 block: one f32 scale per block (1.6% overhead) keeps one large value from
/// flattening the rest of a big tensor to zero.
pub const Q8_BLOCK: usize = 256;

/// How a job's clients send their updates.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Compression {
    /// Full `f32` parameters (4 bytes a value).
    #[default]
    None,
    F16,
    Bf16,
    Int8,
    /// The largest `fraction` (0 < fraction ≤ 1) of each tensor's values, with error feedback.
    TopK {
        fraction: f64,
    },
}

/// The names a job spec uses.
pub const COMPRESSION_NAMES: &str = "none, f16, bf16, int8, topk";

impl Compression {
    /// From a job spec's `compression` and `topk_fraction`.
    pub fn parse(name: &str, topk_fraction: f64) -> Result<Compression> {
        Ok(match name {
            "none" => Compression::None,
            "f16" => Compression::F16,
            "bf16" => Compression::Bf16,
            "int8" => Compression::Int8,
            "topk" => {
                if !(topk_fraction > 0.0 && topk_fraction <= 1.0) {
                    return Err(Error::InvalidValue {
                        what: "updates.topk_fraction".into(),
                        message: format!(
                            "{topk_fraction} is not in (0, 1]: it is the share of each tensor's values a client sends (e.g. 0.01)"
                        ),
                    });
                }
                Compression::TopK {
                    fraction: topk_fraction,
                }
            }
            other => {
                return Err(Error::Unknown {
                    what: "updates.compression",
                    name: other.into(),
                    expected: COMPRESSION_NAMES.into(),
                })
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::F16 => "f16",
            Compression::Bf16 => "bf16",
            Compression::Int8 => "int8",
            Compression::TopK { .. } => "topk",
        }
    }
}

/// How one tensor's bytes encode its values (the wire's `Dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Little-endian f32, 4 bytes a value.
    F32,
    /// Little-endian IEEE half, 2 bytes a value.
    F16,
    /// Little-endian bfloat16, 2 bytes a value.
    Bf16,
    /// `ceil(n / Q8_BLOCK)` little-endian f32 scales, then `n` signed bytes; value `i` is
    /// `q[i] * scale[i / Q8_BLOCK] / 127`.
    Q8,
    /// `k` little-endian u32 indices (strictly increasing, each below `n`), then `k` little-endian
    /// f32 values; every other value is zero. `k` is the byte length / 8.
    TopK,
}

/// One tensor's values, encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub encoding: Encoding,
    pub data: Vec<u8>,
}

/// Encodes `values` with `c` (`seed` drives int8's stochastic rounding). Top-k keeps
/// `ceil(fraction * n)` values (at least one); ties go to the lower index.
pub fn encode(values: &[f32], c: Compression, seed: u64) -> Encoded {
    match c {
        Compression::None => Encoded {
            encoding: Encoding::F32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        },
        Compression::F16 => Encoded {
            encoding: Encoding::F16,
            data: values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        },
        Compression::Bf16 => Encoded {
            encoding: Encoding::Bf16,
            data: values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        },
        Compression::Int8 => Encoded {
            encoding: Encoding::Q8,
            data: encode_q8(values, seed),
        },
        Compression::TopK { fraction } => {
            let kept = top_k(values, fraction);
            let mut data = Vec::with_capacity(kept.len() * 8);
            for &i in &kept {
                data.extend_from_slice(&(i as u32).to_le_bytes());
            }
            for &i in &kept {
                data.extend_from_slice(&values[i].to_le_bytes());
            }
            Encoded {
                encoding: Encoding::TopK,
                data,
            }
        }
    }
}

fn encode_q8(values: &[f32], seed: u64) -> Vec<u8> {
    let blocks = values.len().div_ceil(Q8_BLOCK);
    let mut data = Vec::with_capacity(blocks * 4 + values.len());
    let scales: Vec<f32> = values
        .chunks(Q8_BLOCK)
        .map(|b| b.iter().fold(0.0f32, |m, v| m.max(v.abs())))
        .collect();
    for s in &scales {
        data.extend_from_slice(&s.to_le_bytes());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (block, &scale) in values.chunks(Q8_BLOCK).zip(&scales) {
        for &v in block {
            // A draw per value even where the scale is zero keeps the stream aligned.
            let u: f32 = rng.gen();
            let q = if scale > 0.0 && scale.is_finite() {
                let x = v / scale * 127.0;
                let low = x.floor();
                let q = if u < x - low { low + 1.0 } else { low };
                q.clamp(-127.0, 127.0) as i8
            } else {
                0
            };
            data.push(q as u8);
        }
    }
    data
}

/// Indices of the `ceil(fraction * n)` largest magnitudes (at least one), increasing.
fn top_k(values: &[f32], fraction: f64) -> Vec<usize> {
    let n = values.len();
    if n == 0 {
        return Vec::new();
    }
    let k = ((fraction * n as f64).ceil() as usize).clamp(1, n);
    let mut idx: Vec<usize> = (0..n).collect();
    if k < n {
        // Larger magnitude first, then lower index: a total order, so the choice is unique.
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            values[b].abs().total_cmp(&values[a].abs()).then(a.cmp(&b))
        });
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

/// Why an encoded tensor cannot be decoded.
fn bad(message: String) -> Error {
    Error::InvalidValue {
        what: "compressed update".into(),
        message,
    }
}

/// Adds the `n` values `data` encodes to `out` (`out.len() == n`), checking the byte length,
/// the indices of a top-k tensor and that no scale is negative or non-finite; the sum is
/// checked for finiteness by the caller, as for any update.
pub fn decode_add(encoding: Encoding, data: &[u8], out: &mut [f32]) -> Result<()> {
    let n = out.len();
    let expect = |bytes: Option<usize>| -> Result<()> {
        if Some(data.len()) == bytes {
            Ok(())
        } else {
            Err(bad(format!(
                "{} bytes do not hold {n} values as {encoding:?} ({} bytes expected)",
                data.len(),
                bytes.map_or("too many".into(), |b| b.to_string())
            )))
        }
    };
    match encoding {
        Encoding::F32 => {
            expect(n.checked_mul(4))?;
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o += f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Encoding::F16 => {
            expect(n.checked_mul(2))?;
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o += half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        Encoding::Bf16 => {
            expect(n.checked_mul(2))?;
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o += half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        Encoding::Q8 => {
            let blocks = n.div_ceil(Q8_BLOCK);
            expect(blocks.checked_mul(4).and_then(|b| b.checked_add(n)))?;
            let (scales, qs) = data.split_at(blocks * 4);
            for (b, (chunk, s)) in out
                .chunks_mut(Q8_BLOCK)
                .zip(scales.chunks_exact(4))
                .enumerate()
            {
                let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                if !(scale >= 0.0 && scale.is_finite()) {
                    return Err(bad(format!("int8 block {b} has scale {scale}")));
                }
                let step = scale / 127.0;
                let start = b * Q8_BLOCK;
                let len = chunk.len();
                for (o, &q) in chunk.iter_mut().zip(&qs[start..start + len]) {
                    *o += f32::from(q as i8) * step;
                }
            }
        }
        Encoding::TopK => {
            if !data.len().is_multiple_of(8) || data.len() / 8 > n {
                return Err(bad(format!(
                    "{} bytes are not k indices and k values (k at most {n})",
                    data.len()
                )));
            }
            let k = data.len() / 8;
            let (indices, values) = data.split_at(k * 4);
            let mut next = 0usize;
            for (i, (ib, vb)) in indices
                .chunks_exact(4)
                .zip(values.chunks_exact(4))
                .enumerate()
            {
                let at = u32::from_le_bytes([ib[0], ib[1], ib[2], ib[3]]) as usize;
                if at < next || at >= n {
                    return Err(bad(format!(
                        "top-k index {i} is {at}: indices must increase and stay below {n}"
                    )));
                }
                next = at + 1;
                out[at] += f32::from_le_bytes([vb[0], vb[1], vb[2], vb[3]]);
            }
        }
    }
    Ok(())
}

/// A tensor of a compressed update: the tensor's name and shape, its change encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: Encoded,
}

/// The part of past top-k updates a client has not sent yet, per tensor: added to the next
/// update before choosing what to send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorFeedback {
    residual: Option<Weights>,
}

impl ErrorFeedback {
    /// Values held back, in total (zero before the first top-k update).
    pub fn held_back(&self) -> f64 {
        self.residual.as_ref().map_or(0.0, Weights::l2_norm)
    }
}

/// Encodes the change from `base` (the task's model) to `local` (the client's new parameters).
/// `feedback` carries top-k's held-back values from one update to the next; it is reset when the
/// model's layout changes. `seed` is the task's.
pub fn encode_update(
    base: &Weights,
    local: &Weights,
    c: Compression,
    seed: u64,
    feedback: &mut ErrorFeedback,
) -> Result<Vec<EncodedTensor>> {
    base.check_same_layout(local)?;
    let topk = matches!(c, Compression::TopK { .. });
    if topk
        && feedback
            .residual
            .as_ref()
            .is_some_and(|r| r.check_same_layout(base).is_err())
    {
        feedback.residual = None;
    }
    let mut out = Vec::with_capacity(local.tensors.len());
    let mut residual = Vec::new();
    for (i, (b, l)) in base.tensors.iter().zip(&local.tensors).enumerate() {
        let mut change: Vec<f32> = l.data.iter().zip(&b.data).map(|(l, b)| l - b).collect();
        if topk {
            if let Some(r) = &feedback.residual {
                for (c, r) in change.iter_mut().zip(&r.tensors[i].data) {
                    *c += r;
                }
            }
        }
        let value = encode(
            &change,
            c,
            crate::seed::derive(seed, &[0x0051_5347, i as u64]),
        );
        if topk {
            // What was sent leaves the residual; the rest waits for the next update.
            let mut sent = vec![0.0f32; change.len()];
            decode_add(value.encoding, &value.data, &mut sent)?;
            for (c, s) in change.iter_mut().zip(&sent) {
                *c -= s;
            }
            residual.push(Tensor {
                name: l.name.clone(),
                shape: l.shape.clone(),
                data: change,
            });
        }
        out.push(EncodedTensor {
            name: l.name.clone(),
            shape: l.shape.clone(),
            value,
        });
    }
    if topk {
        feedback.residual = Some(Weights::new(residual));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(e: &Encoded, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; n];
        decode_add(e.encoding, &e.data, &mut out).unwrap();
        out
    }

    fn sample(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.37).sin() * 0.05) * if i % 97 == 0 { 20.0 } else { 1.0 })
            .collect()
    }

    #[test]
    fn half_precision_round_trips_within_its_precision() {
        let x = sample(1000);
        for (c, rel) in [(Compression::F16, 1e-3), (Compression::Bf16, 8e-3)] {
            let e = encode(&x, c, 0);
            assert_eq!(e.data.len(), 2000);
            for (a, b) in x.iter().zip(decode(&e, x.len())) {
                assert!((a - b).abs() <= rel * a.abs() + 1e-7, "{c:?}: {a} vs {b}");
            }
        }
        assert_eq!(decode(&encode(&x, Compression::None, 0), x.len()), x);
    }

    #[test]
    fn int8_is_unbiased_and_reproducible() {
        let x = sample(600);
        let e = encode(&x, Compression::Int8, 7);
        assert_eq!(e.data.len(), 3 * 4 + 600);
        assert_eq!(e, encode(&x, Compression::Int8, 7));
        assert_ne!(e, encode(&x, Compression::Int8, 8));
        // One draw is within one step of each value ...
        let d = decode(&e, x.len());
        for (b, chunk) in x.chunks(Q8_BLOCK).enumerate() {
            let step = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            for (i, &v) in chunk.iter().enumerate() {
                assert!((v - d[b * Q8_BLOCK + i]).abs() <= step * 1.0001);
            }
        }
        // ... and the mean of many draws converges to it (a biased rounding would not: rounding
        // to nearest leaves errors up to half a step that do not average out).
        let draws = 4000;
        let mut mean = vec![0.0f64; x.len()];
        for s in 0..draws {
            for (m, v) in mean
                .iter_mut()
                .zip(decode(&encode(&x, Compression::Int8, s), x.len()))
            {
                *m += f64::from(v) / draws as f64;
            }
        }
        let worst = x
            .iter()
            .zip(&mean)
            .enumerate()
            .map(|(i, (&v, &m))| {
                let step = f64::from(
                    x[i / Q8_BLOCK * Q8_BLOCK..((i / Q8_BLOCK + 1) * Q8_BLOCK).min(x.len())]
                        .iter()
                        .fold(0.0f32, |a, v| a.max(v.abs())),
                ) / 127.0;
                (m - f64::from(v)).abs() / step
            })
            .fold(0.0f64, f64::max);
        // Standard error of a mean of 4000 draws is at most 0.5/sqrt(4000) = 0.008 steps.
        assert!(worst < 0.05, "mean off by {worst} steps");
    }

    #[test]
    fn topk_keeps_the_largest_and_feeds_back_the_rest() {
        let x = vec![0.1, -3.0, 0.2, 2.0, -0.05, 2.0];
        let e = encode(&x, Compression::TopK { fraction: 0.5 }, 0);
        assert_eq!(decode(&e, 6), vec![0.0, -3.0, 0.0, 2.0, 0.0, 2.0]);
        let one = encode(&x, Compression::TopK { fraction: 1e-9 }, 0);
        assert_eq!(decode(&one, 6), vec![0.0, -3.0, 0.0, 0.0, 0.0, 0.0]);

        // Error feedback: over updates, the sum of what was sent plus what is held back equals
        // the sum of the changes.
        let base = Weights::new(vec![Tensor::new("w", vec![6], vec![0.0; 6]).unwrap()]);
        let local = Weights::new(vec![Tensor::new("w", vec![6], x.clone()).unwrap()]);
        let mut fb = ErrorFeedback::default();
        let c = Compression::TopK { fraction: 0.2 };
        let mut sent = vec![0.0f32; 6];
        for round in 0..3 {
            let u = encode_update(&base, &local, c, round, &mut fb).unwrap();
            decode_add(u[0].value.encoding, &u[0].value.data, &mut sent).unwrap();
        }
        let held = &fb.residual.as_ref().unwrap().tensors[0].data;
        for i in 0..6 {
            assert!((sent[i] + held[i] - 3.0 * x[i]).abs() < 1e-6);
        }
        // Three rounds sent the three largest accumulated values, not the same one thrice.
        assert_eq!(sent.iter().filter(|v| **v != 0.0).count(), 3);
    }

    #[test]
    fn malformed_encodings_are_refused_naming_the_problem() {
        let mut out = vec![0.0f32; 4];
        let err =
            |enc, data: &[u8], out: &mut [f32]| decode_add(enc, data, out).unwrap_err().to_string();
        assert!(err(Encoding::F16, &[0; 7], &mut out).contains("7 bytes do not hold 4 values"));
        assert!(err(Encoding::Q8, &[0; 4], &mut out).contains("8 bytes expected"));
        let mut q8 = (-1.0f32).to_le_bytes().to_vec();
        q8.extend([1, 2, 3, 4]);
        assert!(err(Encoding::Q8, &q8, &mut out).contains("scale -1"));
        // indices 2 then 1: not increasing
        let mut tk = Vec::new();
        for i in [2u32, 1] {
            tk.extend(i.to_le_bytes());
        }
        tk.extend([0u8; 8]);
        assert!(err(Encoding::TopK, &tk, &mut out).contains("must increase"));
        let mut tk = 9u32.to_le_bytes().to_vec();
        tk.extend([0u8; 4]);
        assert!(err(Encoding::TopK, &tk, &mut out).contains("below 4"));
        assert!(err(Encoding::TopK, &[0; 40], &mut out).contains("k at most 4"));
    }

    #[test]
    fn an_update_adds_back_to_the_local_model() {
        let base = Weights::new(vec![
            Tensor::new("w", vec![2, 300], sample(600)).unwrap(),
            Tensor::new("b", vec![3], vec![1.0, 2.0, 3.0]).unwrap(),
        ]);
        let mut local = base.clone();
        for v in local.values_mut() {
            *v += 0.01;
        }
        let mut fb = ErrorFeedback::default();
        for c in [Compression::None, Compression::F16, Compression::Int8] {
            let u = encode_update(&base, &local, c, 1, &mut fb).unwrap();
            let mut back = base.clone();
            for (t, e) in back.tensors.iter_mut().zip(&u) {
                assert_eq!((t.name.as_str(), &t.shape), (e.name.as_str(), &e.shape));
                decode_add(e.value.encoding, &e.value.data, &mut t.data).unwrap();
            }
            assert!(back.distance(&local).unwrap() < 2e-3, "{c:?}");
        }
        assert_eq!(fb.held_back(), 0.0);
    }
}
