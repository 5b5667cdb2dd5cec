//! Datasets: an `f32` feature matrix with class labels, and the ways Shoal splits it.
//!
//! [`Dataset`] is the one in-memory form every loader produces. A dataset reaches a client as one
//! shard of a built-in dataset ([`builtin::Builtin`]) or as a CSV file ([`csv::load_csv`]); the
//! coordinator evaluates on a centralized hold-out set cut with [`stratified_split`].
//!
//! # Layout
//! - `mod.rs`: [`Dataset`], [`stratified_split`], [`sort_class_names`]
//! - `csv.rs`: loading a labelled CSV file, with file-and-line errors
//! - `builtin.rs`: the built-in datasets (digits, seed-fl, iris, winequality), their hold-out sets and
//!   client shards
//! - `partition.rs`: [`partition::Partitioner`], how a training pool is spread over clients (IID,
//!   label-skewed Dirichlet, K classes per client, quantity-skewed)

pub mod builtin;
pub mod csv;
pub mod numpy_legacy;
pub mod partition;

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// A labelled classification dataset.
///
/// # Shapes
/// - `features`: `[n_rows, n_features]`
/// - `labels`: `[n_rows]`, each an index into `class_names`
/// - `feature_names`: `[n_features]`
/// - `class_names`: `[n_classes]`, distinct
///
/// Build one with [`Dataset::new`], which checks these invariants; the fields are public for
/// reading, and code that writes them directly is responsible for keeping them.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// One row per example, one column per feature.
    pub features: Array2<f32>,
    /// The class index of each row.
    pub labels: Vec<usize>,
    /// The name of each feature column.
    pub feature_names: Vec<String>,
    /// The name of each class; `labels` index into it.
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Builds a dataset after checking that the parts agree: one label per row, one name per
    /// feature column, distinct class names, every label a valid class index, and finite features
    /// (a NaN would silently poison every model trained on it).
    pub fn new(
        features: Array2<f32>,
        labels: Vec<usize>,
        feature_names: Vec<String>,
        class_names: Vec<String>,
    ) -> Result<Self> {
        if features.nrows() != labels.len() {
            return Err(Error::Shape {
                what: "dataset labels".into(),
                expected: format!("{} labels (one per feature row)", features.nrows()),
                found: format!("{} labels", labels.len()),
            });
        }
        if features.ncols() != feature_names.len() {
            return Err(Error::Shape {
                what: "dataset feature names".into(),
                expected: format!("{} names (one per feature column)", features.ncols()),
                found: format!("{} names", feature_names.len()),
            });
        }
        let mut seen = HashMap::new();
        for (i, name) in class_names.iter().enumerate() {
            if let Some(first) = seen.insert(name.as_str(), i) {
                return Err(Error::Data(format!(
                    "duplicate class name `{name}` (classes {first} and {i})"
                )));
            }
        }
        if let Some((row, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l >= class_names.len())
        {
            return Err(Error::Data(format!(
                "row {row} has label {label}, but there are only {} classes",
                class_names.len()
            )));
        }
        if let Some(((row, col), _)) = features.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "dataset features (row {row}, column `{}`)",
                feature_names[col]
            )));
        }
        Ok(Dataset {
            features,
            labels,
            feature_names,
            class_names,
        })
    }

    /// Number of examples.
    pub fn n_rows(&self) -> usize {
        self.features.nrows()
    }

    /// Number of feature columns.
    pub fn n_features(&self) -> usize {
        self.features.ncols()
    }

    /// Number of classes named, whether or not every one has rows here.
    pub fn n_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The given rows, in the given order (repeats allowed), with the same names.
    ///
    /// # Panics
    /// If a row index is out of range, like slice indexing: callers pass indices they computed
    /// from this dataset (a split or a partition), never user input.
    pub fn select(&self, rows: &[usize]) -> Dataset {
        Dataset {
            features: self.features.select(Axis(0), rows),
            labels: rows.iter().map(|&r| self.labels[r]).collect(),
            feature_names: self.feature_names.clone(),
            class_names: self.class_names.clone(),
        }
    }

    /// Rows per class, indexed like `class_names`.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.n_classes()];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }

    /// Number of classes with at least one row.
    pub fn classes_present(&self) -> usize {
        self.class_counts().iter().filter(|&&c| c > 0).count()
    }

    /// Writes the dataset as CSV: a header of the feature names then `label`, one row per
    /// example with the class *name* in the label cell.
    ///
    /// Floats are written with Rust's shortest round-trip formatting, so [`csv::load_csv`] reads
    /// back bit-identical values. The loader rebuilds the class list from the labels it sees
    /// (ordered by [`sort_class_names`]), so a round trip is exact when every class has rows and
    /// `class_names` is already in that order; otherwise use [`Dataset::remap_classes`].
    pub fn to_csv(&self, path: &Path) -> Result<()> {
        if let Some(i) = self.feature_names.iter().position(|n| n == "label") {
            return Err(Error::Data(format!(
                "cannot write {}: feature column {} is named `label`, which is the label column's name",
                path.display(),
                i + 1
            )));
        }
        let io_err = |source: std::io::Error| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io_err)?;
        let mut writer = ::csv::Writer::from_writer(std::io::BufWriter::new(file));
        let header = self
            .feature_names
            .iter()
            .map(String::as_str)
            .chain(std::iter::once("label"));
        writer.write_record(header).map_err(|e| io_err(e.into()))?;
        let mut record = Vec::with_capacity(self.n_features() + 1);
        for (row, &label) in self.features.outer_iter().zip(&self.labels) {
            record.clear();
            // `{}` on f32 prints the shortest string that parses back to the same value.
            record.extend(row.iter().map(|v| v.to_string()));
            let class = self.class_names.get(label).ok_or_else(|| {
                Error::Data(format!(
                    "cannot write {}: label {label} is out of range for {} classes",
                    path.display(),
                    self.n_classes()
                ))
            })?;
            record.push(class.clone());
            writer.write_record(&record).map_err(|e| io_err(e.into()))?;
        }
        writer.flush().map_err(io_err)
    }

    /// Re-indexes the labels into `global`, a class list shared by every participant, so that
    /// label `k` means the same class on every client (a CSV shard only knows the classes it
    /// contains). Errors if a local class name is missing from `global`.
    pub fn remap_classes(&self, global: &[String]) -> Result<Dataset> {
        let index: HashMap<&str, usize> = global
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let missing: Vec<&str> = self
            .class_names
            .iter()
            .map(String::as_str)
            .filter(|n| !index.contains_key(n))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Data(format!(
                "classes {} are not in the global class list [{}]",
                missing
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                global.join(", ")
            )));
        }
        let to_global: Vec<usize> = self.class_names.iter().map(|n| index[n.as_str()]).collect();
        Dataset::new(
            self.features.clone(),
            self.labels.iter().map(|&l| to_global[l]).collect(),
            self.feature_names.clone(),
            global.to_vec(),
        )
    }
}

/// Deterministic stratified split of row indices into `(train_rows, test_rows)`, each sorted
/// ascending.
///
/// For each class in turn, that class's row indices are shuffled with one `ChaCha8Rng` seeded by
/// `seed`, and `round(test_fraction * n_c)` of them go to test (at least one when the class has
/// two or more rows and `test_fraction > 0`), so every class keeps its proportion to within a row.
/// `test_fraction` is clamped to `[0, 1]`. Labels `>= n_classes` are stratified as further
/// classes rather than dropped, so every row lands in exactly one of the two lists.
pub fn stratified_split(
    labels: &[usize],
    n_classes: usize,
    test_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let fraction = if test_fraction.is_nan() {
        0.0
    } else {
        test_fraction.clamp(0.0, 1.0)
    };
    let n_groups = labels
        .iter()
        .map(|&l| l + 1)
        .max()
        .unwrap_or(0)
        .max(n_classes);
    let mut by_class = vec![Vec::new(); n_groups];
    for (row, &l) in labels.iter().enumerate() {
        by_class[l].push(row);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for mut rows in by_class {
        rows.shuffle(&mut rng);
        let n = rows.len();
        // The float-to-int cast saturates, and `fraction` is in [0, 1], so this is in 0..=n.
        let mut n_test = ((fraction * n as f64).round() as usize).min(n);
        if n_test == 0 && n >= 2 && fraction > 0.0 {
            n_test = 1;
        }
        test.extend_from_slice(&rows[..n_test]);
        train.extend_from_slice(&rows[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// Stacks datasets that share their feature and class names, rows one after another.
pub fn concat(parts: &[Dataset]) -> Result<Dataset> {
    let first = parts
        .first()
        .ok_or_else(|| Error::Data("nothing to concatenate".into()))?;
    let views: Vec<_> = parts.iter().map(|d| d.features.view()).collect();
    let features = ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| Error::Shape {
        what: "concatenated datasets".into(),
        expected: format!("{} feature columns each", first.n_features()),
        found: e.to_string(),
    })?;
    Dataset::new(
        features,
        parts
            .iter()
            .flat_map(|d| d.labels.iter().copied())
            .collect(),
        first.feature_names.clone(),
        first.class_names.clone(),
    )
}

/// Sorts class names into the order every loader shares: numerically if every name parses as
/// an integer (so `"10"` follows `"9"`), lexicographically otherwise.
///
/// Takes a slice; a `&mut Vec<String>` coerces to it.
pub fn sort_class_names(names: &mut [String]) {
    let numbers: Option<Vec<i128>> = names.iter().map(|n| n.parse().ok()).collect();
    match numbers {
        Some(numbers) => {
            let mut keyed: Vec<(i128, String)> =
                numbers.into_iter().zip(names.iter().cloned()).collect();
            // Ties ("1" and "01") fall back to the string, so the order is still total.
            keyed.sort();
            for (slot, (_, name)) in names.iter_mut().zip(keyed) {
                *slot = name;
            }
        }
        None => names.sort(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn small() -> Dataset {
        Dataset::new(
            array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]],
            vec![0, 1, 1, 2],
            names(&["a", "b"]),
            names(&["x", "y", "z"]),
        )
        .unwrap()
    }

    #[test]
    fn new_rejects_mismatched_parts() {
        let f = array![[1.0f32, 2.0], [3.0, 4.0]];
        let err = Dataset::new(f.clone(), vec![0], names(&["a", "b"]), names(&["c"]));
        assert!(matches!(err, Err(Error::Shape { .. })), "{err:?}");
        let err = Dataset::new(f.clone(), vec![0, 0], names(&["a"]), names(&["c"]));
        assert!(matches!(err, Err(Error::Shape { .. })), "{err:?}");
        let err = Dataset::new(f.clone(), vec![0, 1], names(&["a", "b"]), names(&["c"]));
        assert!(err.unwrap_err().to_string().contains("label 1"));
        let err = Dataset::new(
            f.clone(),
            vec![0, 1],
            names(&["a", "b"]),
            names(&["c", "c"]),
        );
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("duplicate class name `c`"));
        let nan = array![[1.0f32, f32::NAN], [3.0, 4.0]];
        let err = Dataset::new(nan, vec![0, 0], names(&["a", "b"]), names(&["c"]));
        assert!(matches!(err, Err(Error::NonFinite(_))), "{err:?}");
        assert!(Dataset::new(f, vec![0, 0], names(&["a", "b"]), names(&["c"])).is_ok());
    }

    #[test]
    fn select_counts_and_present() {
        let d = small();
        assert_eq!((d.n_rows(), d.n_features(), d.n_classes()), (4, 2, 3));
        assert_eq!(d.class_counts(), vec![1, 2, 1]);
        assert_eq!(d.classes_present(), 3);
        let s = d.select(&[3, 1]);
        assert_eq!(s.features, array![[7.0, 8.0], [3.0, 4.0]]);
        assert_eq!(s.labels, vec![2, 1]);
        assert_eq!(s.class_names, d.class_names);
        assert_eq!(s.class_counts(), vec![0, 1, 1]);
        assert_eq!(s.classes_present(), 2);
        let empty = d.select(&[]);
        assert_eq!((empty.n_rows(), empty.n_features()), (0, 2));
    }

    #[test]
    fn remap_classes_reindexes_and_names_missing() {
        let d = small();
        let global = names(&["w", "z", "y", "x"]);
        let r = d.remap_classes(&global).unwrap();
        assert_eq!(r.labels, vec![3, 2, 2, 1]);
        assert_eq!(r.class_names, global);
        let err = d
            .remap_classes(&names(&["x", "q"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`y`") && err.contains("`z`"), "{err}");
        assert!(!err.contains("`x`"), "{err}");
    }

    #[test]
    fn stratified_split_keeps_proportions_and_is_deterministic() {
        // Classes of 50, 30, 17, 3 and 1 rows, interleaved.
        let mut labels = Vec::new();
        for (class, n) in [50usize, 30, 17, 3, 1].into_iter().enumerate() {
            labels.extend(std::iter::repeat_n(class, n));
        }
        labels.shuffle(&mut ChaCha8Rng::seed_from_u64(9));
        let (train, test) = stratified_split(&labels, 5, 0.2, 7);
        assert_eq!(train.len() + test.len(), labels.len());
        let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..labels.len()).collect::<Vec<_>>());
        assert!(train.windows(2).all(|w| w[0] < w[1]));
        assert!(test.windows(2).all(|w| w[0] < w[1]));
        for class in 0..5 {
            let n_c = labels.iter().filter(|&&l| l == class).count();
            let in_test = test.iter().filter(|&&r| labels[r] == class).count();
            let expected = 0.2 * n_c as f64;
            assert!(
                (in_test as f64 - expected).abs() <= 1.0,
                "class {class}: {in_test} of {n_c} in test"
            );
            if n_c >= 2 {
                assert!(in_test >= 1);
            }
        }
        assert_eq!(
            stratified_split(&labels, 5, 0.2, 7),
            (train.clone(), test.clone())
        );
        assert_ne!(stratified_split(&labels, 5, 0.2, 8).1, test);
    }

    #[test]
    fn stratified_split_keeps_out_of_range_labels_and_clamps() {
        let labels = vec![0, 0, 5, 5, 5, 5];
        let (train, test) = stratified_split(&labels, 2, 0.5, 0);
        assert_eq!(train.len() + test.len(), 6);
        assert_eq!(test.iter().filter(|&&r| labels[r] == 5).count(), 2);
        assert_eq!(stratified_split(&labels, 2, 7.0, 0).1.len(), 6);
        assert_eq!(stratified_split(&labels, 2, f64::NAN, 0).1.len(), 0);
    }

    #[test]
    fn sort_class_names_numeric_then_lexicographic() {
        let mut n = names(&["10", "9", "-1", "2"]);
        sort_class_names(&mut n);
        assert_eq!(n, names(&["-1", "2", "9", "10"]));
        let mut s = names(&["virginica", "10", "setosa", "9"]);
        sort_class_names(&mut s);
        assert_eq!(s, names(&["10", "9", "setosa", "virginica"]));
        let mut v: Vec<String> = Vec::new();
        sort_class_names(&mut v);
        assert!(v.is_empty());
    }
}
