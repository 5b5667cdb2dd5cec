//! Named tensors: a model's parameters as they cross the wire and enter aggregation.
//!
//! Values are `f32`, row-major. [`Weights`] keeps its tensors in a fixed order, so two weight sets of
//! the same model line up position by position and aggregation needs no name lookups.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One named, row-major `f32` tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor, checked: `data.len()` must equal the product of `shape`.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let name = name.into();
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(Error::Shape {
                what: format!("tensor `{name}`"),
                expected: format!("{expected} values for shape {shape:?}"),
                found: format!("{} values", data.len()),
            });
        }
        Ok(Tensor { name, shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(name: impl Into<String>, shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor {
            name: name.into(),
            shape,
            data: vec![0.0; n],
        }
    }

    pub fn from_array2(name: impl Into<String>, a: &Array2<f32>) -> Self {
        Tensor {
            name: name.into(),
            shape: a.shape().to_vec(),
            data: a.iter().copied().collect(),
        }
    }

    pub fn from_array1(name: impl Into<String>, a: &Array1<f32>) -> Self {
        Tensor {
            name: name.into(),
            shape: vec![a.len()],
            data: a.to_vec(),
        }
    }

    /// A 2-D view; fails when the tensor is not 2-D.
    pub fn view2(&self) -> Result<ArrayView2<'_, f32>> {
        match self.shape.as_slice() {
            [r, c] => ArrayView2::from_shape((*r, *c), &self.data).map_err(|e| self.shape_err(e)),
            _ => Err(Error::Shape {
                what: format!("tensor `{}`", self.name),
                expected: "2 dimensions".into(),
                found: format!("shape {:?}", self.shape),
            }),
        }
    }

    /// A 1-D view; fails when the tensor is not 1-D.
    pub fn view1(&self) -> Result<ArrayView1<'_, f32>> {
        match self.shape.as_slice() {
            [n] => ArrayView1::from_shape(*n, &self.data).map_err(|e| self.shape_err(e)),
            _ => Err(Error::Shape {
                what: format!("tensor `{}`", self.name),
                expected: "1 dimension".into(),
                found: format!("shape {:?}", self.shape),
            }),
        }
    }

    fn shape_err(&self, e: ndarray::ShapeError) -> Error {
        Error::Shape {
            what: format!("tensor `{}`", self.name),
            expected: format!("shape {:?}", self.shape),
            found: e.to_string(),
        }
    }
}

/// A model's parameters: named tensors in a fixed order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Weights {
    pub tensors: Vec<Tensor>,
}

impl Weights {
    pub fn new(tensors: Vec<Tensor>) -> Self {
        Weights { tensors }
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::Shape {
                what: "weights".into(),
                expected: format!("a tensor named `{name}`"),
                found: format!("{:?}", self.names()),
            })
    }

    pub fn names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.name.as_str()).collect()
    }

    /// Total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len()).sum()
    }

    /// Same layout as `self`, all zeros.
    pub fn zeros_like(&self) -> Weights {
        Weights {
            tensors: self
                .tensors
                .iter()
                .map(|t| Tensor::zeros(t.name.clone(), t.shape.clone()))
                .collect(),
        }
    }

    /// Checks that `other` has exactly this layout: same tensor names and shapes, in order.
    pub fn check_same_layout(&self, other: &Weights) -> Result<()> {
        check_layout(
            self.tensors
                .iter()
                .map(|t| (t.name.as_str(), t.shape.as_slice(), t.data.len())),
            other,
        )
    }

    /// The names and shapes of the tensors, without their values.
    pub fn layout(&self) -> Layout {
        Layout {
            tensors: self
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.shape.clone(), t.data.len()))
                .collect(),
        }
    }

    /// Fails on the first NaN or infinity, naming the tensor and index.
    pub fn check_finite(&self) -> Result<()> {
        for t in &self.tensors {
            if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite(format!(
                    "tensor `{}` at index {i} ({})",
                    t.name, t.data[i]
                )));
            }
        }
        Ok(())
    }

    /// Iterates over all values in layout order.
    pub fn values(&self) -> impl Iterator<Item = f32> + '_ {
        self.tensors.iter().flat_map(|t| t.data.iter().copied())
    }

    /// Mutable iteration over all values in layout order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut f32> + '_ {
        self.tensors.iter_mut().flat_map(|t| t.data.iter_mut())
    }

    /// `self += a * other` (layouts must match; checked by the caller or by [`Self::check_same_layout`]).
    pub fn add_scaled(&mut self, a: f32, other: &Weights) -> Result<()> {
        self.check_same_layout(other)?;
        for (x, y) in self.values_mut().zip(other.values()) {
            *x += a * y;
        }
        Ok(())
    }

    /// Euclidean distance to `other` (layouts must match).
    pub fn distance(&self, other: &Weights) -> Result<f64> {
        self.check_same_layout(other)?;
        Ok(self
            .values()
            .zip(other.values())
            .map(|(a, b)| {
                let d = f64::from(a) - f64::from(b);
                d * d
            })
            .sum::<f64>()
            .sqrt())
    }

    /// Norm clipping of an update: moves `self` toward `center` along the line between them so
    /// that its distance is at most `max`. Returns the distance before clipping.
    pub fn clip_toward(&mut self, center: &Weights, max: f64) -> Result<f64> {
        let d = self.distance(center)?;
        if d > max && d > 0.0 {
            let keep = max / d;
            for (x, c) in self.values_mut().zip(center.values()) {
                let (xf, cf) = (f64::from(*x), f64::from(c));
                *x = (cf + (xf - cf) * keep) as f32;
            }
        }
        Ok(d)
    }

    /// Euclidean norm of all values.
    pub fn l2_norm(&self) -> f64 {
        self.values()
            .map(|v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt()
    }
}

/// A model's layout without its values: tensor names, shapes and lengths, in order. What an
/// aggregate keeps to check updates against, instead of a zeroed copy of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// `(name, shape, number of values)` per tensor.
    pub(crate) tensors: Vec<(String, Vec<usize>, usize)>,
}

impl Layout {
    /// Total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.tensors.iter().map(|t| t.2).sum()
    }

    /// Checks that `other` has exactly this layout (as [`Weights::check_same_layout`]).
    pub fn check(&self, other: &Weights) -> Result<()> {
        check_layout(
            self.tensors
                .iter()
                .map(|(name, shape, len)| (name.as_str(), shape.as_slice(), *len)),
            other,
        )
    }
}

/// `other` against the expected `(name, shape, len)` of each tensor, naming the first mismatch.
fn check_layout<'a>(
    expected: impl ExactSizeIterator<Item = (&'a str, &'a [usize], usize)> + Clone,
    other: &Weights,
) -> Result<()> {
    if expected.len() != other.tensors.len() {
        let names: Vec<&str> = expected.clone().map(|t| t.0).collect();
        return Err(Error::Shape {
            what: "weights".into(),
            expected: format!("{} tensors {names:?}", names.len()),
            found: format!("{} tensors {:?}", other.tensors.len(), other.names()),
        });
    }
    for ((name, shape, len), b) in expected.zip(&other.tensors) {
        if name != b.name || shape != b.shape.as_slice() || b.data.len() != len {
            return Err(Error::Shape {
                what: format!("tensor `{name}`"),
                expected: format!("`{name}` with shape {shape:?}"),
                found: format!(
                    "`{}` with shape {:?} ({} values)",
                    b.name,
                    b.shape,
                    b.data.len()
                ),
            });
        }
    }
    Ok(())
}

/// Tensor files in the safetensors format (what Hugging Face's `safetensors` package writes from
/// PyTorch, JAX or numpy): the exchange format for a model's initial parameters.
impl Weights {
    /// Reads the tensors of a safetensors file, in the order of their data in the file (writers
    /// sort by name). Only float32 tensors are read: the wire carries f32. At most `max_elements`
    /// values in all, checked from the header before anything is copied.
    pub fn from_safetensors(bytes: &[u8], max_elements: usize) -> Result<Weights> {
        use safetensors::{Dtype, SafeTensors};
        let bad = |m: String| Error::Data(format!("not a usable safetensors file: {m}"));
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let names = meta.offset_keys();
        if names.is_empty() {
            return Err(bad("it holds no tensors".into()));
        }
        let mut total = 0usize;
        for name in &names {
            let info = meta
                .info(name)
                .ok_or_else(|| bad(format!("no entry for `{name}`")))?;
            if info.dtype != Dtype::F32 {
                return Err(Error::Data(format!(
                    "tensor `{name}` is {:?}: Shoal exchanges float32 tensors (convert it, e.g. with `.float()` in PyTorch)",
                    info.dtype
                )));
            }
            let n = info.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            total = n
                .and_then(|n| total.checked_add(n))
                .filter(|&t| t <= max_elements)
                .ok_or_else(|| {
                    Error::Data(format!(
                        "the tensors hold more than {max_elements} values, the coordinator's limit (--max-tensor-elements)"
                    ))
                })?;
        }
        let file = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let mut tensors = Vec::with_capacity(names.len());
        for name in names {
            let view = file.tensor(&name).map_err(|e| bad(e.to_string()))?;
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            tensors.push(Tensor::new(name, view.shape().to_vec(), data)?);
        }
        let w = Weights::new(tensors);
        w.check_finite()?;
        Ok(w)
    }

    /// These tensors as a safetensors file (float32, little-endian; the format sorts them by name).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        safetensors_of(&[("", self)], None)
    }
}

/// Several weight sets in one safetensors file, each tensor named `group/name` (just `name` for
/// the group `""`), with `metadata` in the file's `__metadata__` header.
pub fn safetensors_of(
    groups: &[(&str, &Weights)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let named: Vec<(String, Vec<u8>, Vec<usize>)> = groups
        .iter()
        .flat_map(|(group, w)| {
            w.tensors.iter().map(move |t| {
                let name = if group.is_empty() {
                    t.name.clone()
                } else {
                    format!("{group}/{}", t.name)
                };
                let mut data = Vec::with_capacity(4 * t.data.len());
                for v in &t.data {
                    data.extend_from_slice(&v.to_le_bytes());
                }
                (name, data, t.shape.clone())
            })
        })
        .collect();
    let mut views = Vec::with_capacity(named.len());
    for (name, data, shape) in &named {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map_err(|e| Error::Data(format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, metadata)
        .map_err(|e| Error::Data(format!("cannot write safetensors: {e}")))
}

/// One group of [`safetensors_of`] read back in `layout`'s order and shapes; `None` when the
/// file holds no tensor of the group.
pub fn safetensors_group(
    file: &safetensors::SafeTensors<'_>,
    group: &str,
    layout: &Weights,
) -> Result<Option<Weights>> {
    let name = |t: &str| {
        if group.is_empty() {
            t.to_string()
        } else {
            format!("{group}/{t}")
        }
    };
    let Some(first) = layout.tensors.first() else {
        return Ok(None);
    };
    if file.tensor(&name(&first.name)).is_err() {
        return Ok(None);
    }
    let mut out = layout.clone();
    for t in &mut out.tensors {
        let n = name(&t.name);
        let view = file
            .tensor(&n)
            .map_err(|e| Error::Data(format!("tensor `{n}`: {e}")))?;
        if view.dtype() != safetensors::Dtype::F32 || view.shape() != t.shape.as_slice() {
            return Err(Error::Shape {
                what: format!("tensor `{n}`"),
                expected: format!("float32 with shape {:?}", t.shape),
                found: format!("{:?} with shape {:?}", view.dtype(), view.shape()),
            });
        }
        for (v, c) in t.data.iter_mut().zip(view.data().chunks_exact(4)) {
            *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(vals: &[f32]) -> Weights {
        Weights::new(vec![
            Tensor::new("a", vec![2], vals[..2].to_vec()).unwrap(),
            Tensor::new("b", vec![1], vals[2..].to_vec()).unwrap(),
        ])
    }

    #[test]
    fn clipping_pulls_an_update_to_the_bound_along_its_direction() {
        let center = w(&[1.0, 1.0, 1.0]);
        let mut u = w(&[4.0, 5.0, 1.0]); // delta (3, 4, 0): norm 5
        assert_eq!(u.distance(&center).unwrap(), 5.0);
        assert_eq!(u.clip_toward(&center, 2.5).unwrap(), 5.0);
        let v: Vec<f32> = u.values().collect();
        assert_eq!(v, vec![2.5, 3.0, 1.0]);
        assert!((u.distance(&center).unwrap() - 2.5).abs() < 1e-6);
        // Within the bound nothing moves.
        let before = u.clone();
        u.clip_toward(&center, 10.0).unwrap();
        assert_eq!(u, before);
    }

    #[test]
    fn tensor_new_checks_length() {
        assert!(Tensor::new("x", vec![2, 3], vec![0.0; 5]).is_err());
        assert!(Tensor::new("x", vec![2, 3], vec![0.0; 6]).is_ok());
    }

    #[test]
    fn layout_mismatch_is_reported_with_names() {
        let a = w(&[1.0, 2.0, 3.0]);
        let mut b = a.clone();
        b.tensors[1] = Tensor::new("b", vec![2], vec![0.0, 0.0]).unwrap();
        let err = a.check_same_layout(&b).unwrap_err().to_string();
        assert!(err.contains("`b`"), "{err}");
        assert!(a.check_same_layout(&a.clone()).is_ok());
    }

    #[test]
    fn non_finite_is_found() {
        let mut a = w(&[1.0, 2.0, 3.0]);
        assert!(a.check_finite().is_ok());
        a.tensors[0].data[1] = f32::NAN;
        let err = a.check_finite().unwrap_err().to_string();
        assert!(err.contains("`a` at index 1"), "{err}");
    }

    #[test]
    fn add_scaled_and_norm() {
        let mut a = w(&[1.0, 2.0, 3.0]);
        a.add_scaled(2.0, &w(&[1.0, 0.0, -1.0])).unwrap();
        assert_eq!(a.values().collect::<Vec<_>>(), vec![3.0, 2.0, 1.0]);
        assert!((a.l2_norm() - 14f64.sqrt()).abs() < 1e-9);
    }

    /// Tensors survive a safetensors round trip (reordered by name, as the format stores them);
    /// bad files are refused with the reason.
    #[test]
    fn safetensors_round_trip_and_refusals() {
        let w = Weights::new(vec![
            Tensor::new(
                "layer.weight",
                vec![2, 3],
                vec![1.0, -2.0, 3.5, 0.0, 1e-3, 7.0],
            )
            .unwrap(),
            Tensor::new("bias", vec![3], vec![0.5, 0.25, -0.125]).unwrap(),
        ]);
        let bytes = w.to_safetensors().unwrap();
        let back = Weights::from_safetensors(&bytes, 100).unwrap();
        assert_eq!(back.names(), vec!["bias", "layer.weight"]);
        assert_eq!(
            back.get("layer.weight").unwrap(),
            w.get("layer.weight").unwrap()
        );
        assert_eq!(back.get("bias").unwrap(), w.get("bias").unwrap());
        let over = Weights::from_safetensors(&bytes, 8)
            .unwrap_err()
            .to_string();
        assert!(over.contains("more than 8 values"), "{over}");
        let junk = Weights::from_safetensors(b"not a file", 100)
            .unwrap_err()
            .to_string();
        assert!(junk.contains("not a usable safetensors file"), "{junk}");
        // A float16 tensor, as a header written by hand: refused by name and dtype.
        let header = br#"{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#;
        let mut f16 = (header.len() as u64).to_le_bytes().to_vec();
        f16.extend_from_slice(header);
        f16.extend_from_slice(&[0, 60, 0, 60]);
        let e = Weights::from_safetensors(&f16, 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`h` is F16") && e.contains("float32"), "{e}");
    }
}
