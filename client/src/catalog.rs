//! A client's local data: each dataset it holds, split into a local train and test part.
//!
//! Rows stay here; only names and sizes go into the `Hello`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_proto::v1::DatasetInfo;
use shoal_shared::data::builtin::Builtin;
use shoal_shared::data::partition::Partitioner;
use shoal_shared::data::{csv, stratified_split, Dataset};

use crate::error::{ClientError, Result};

/// Fraction of each local dataset kept for federated evaluation.
pub const LOCAL_TEST_FRACTION: f64 = 0.2;
/// Fraction of each local dataset AutoML trials validate on (the rest trains): with the
/// coordinator's 20% test set, a 60/20/20 split overall.
pub const VALIDATION_FRACTION: f64 = 0.25;
/// Seed of the validation split: fixed, so every trial of every search sees the same split.
const VALIDATION_SEED: u64 = 0x7661_6c69_6461_7465;

/// The train and validation parts of an AutoML split, or why there is none.
type ValidationSplit = std::result::Result<(Arc<Dataset>, Arc<Dataset>), String>;

/// One dataset as the client holds it.
#[derive(Debug, Clone)]
pub struct LocalData {
    pub train: Arc<Dataset>,
    pub test: Arc<Dataset>,
    /// The validation view, made on first use.
    validation: Arc<std::sync::OnceLock<ValidationSplit>>,
}

impl LocalData {
    fn new(train: Dataset, test: Dataset) -> Self {
        LocalData {
            train: Arc::new(train),
            test: Arc::new(test),
            validation: Default::default(),
        }
    }

    /// The data as AutoML trials see it: all local rows (train and test) split again, stratified,
    /// into a train part and a [`VALIDATION_FRACTION`] validation part, presented as `train` and
    /// `test`. Always the same split.
    pub fn validation_view(&self) -> std::result::Result<LocalData, String> {
        let split = self.validation.get_or_init(|| {
            let all = shoal_shared::data::concat(&[
                self.train.as_ref().clone(),
                self.test.as_ref().clone(),
            ])
            .map_err(|e| e.to_string())?;
            let (train, val) = stratified_split(
                &all.labels,
                all.n_classes(),
                VALIDATION_FRACTION,
                VALIDATION_SEED,
            );
            if train.is_empty() || val.is_empty() {
                return Err(format!(
                    "{} rows are too few for a validation split",
                    all.n_rows()
                ));
            }
            Ok((Arc::new(all.select(&train)), Arc::new(all.select(&val))))
        });
        let (train, test) = split.clone()?;
        Ok(LocalData {
            train,
            test,
            validation: Default::default(),
        })
    }
}

/// The datasets a client holds, by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    datasets: BTreeMap<String, LocalData>,
}

impl Catalog {
    pub fn new() -> Self {
        Catalog::default()
    }

    /// Adds `data` under `name`, split into train and test with a seeded stratified split.
    pub fn insert(&mut self, name: &str, data: Dataset, seed: u64) -> Result<()> {
        if self.datasets.contains_key(name) {
            return Err(ClientError::Config(format!(
                "dataset `{name}` is given twice"
            )));
        }
        if data.n_rows() < 2 {
            return Err(ClientError::Config(format!(
                "dataset `{name}` has {} rows; a client needs at least 2 (one to train, one to test)",
                data.n_rows()
            )));
        }
        let (train, test) =
            stratified_split(&data.labels, data.n_classes(), LOCAL_TEST_FRACTION, seed);
        let (train, test) = if test.is_empty() || train.is_empty() {
            // Too few rows per class to stratify: fall back to a plain cut, keeping both non-empty.
            let n = data.n_rows();
            let cut = n - (n / 5).max(1);
            ((0..cut).collect(), (cut..n).collect())
        } else {
            (train, test)
        };
        self.datasets.insert(
            name.to_string(),
            LocalData::new(data.select(&train), data.select(&test)),
        );
        Ok(())
    }

    /// Adds a CSV file under `name`.
    pub fn add_csv(
        &mut self,
        name: &str,
        path: &Path,
        label_column: Option<&str>,
        seed: u64,
    ) -> Result<()> {
        let data = csv::load_csv(path, label_column)?;
        self.insert(name, data, seed)
    }

    /// Derives this client's own shard of a built-in dataset, locally: no rows cross the network.
    pub fn add_builtin(
        &mut self,
        dataset: Builtin,
        scheme: &Partitioner,
        shard: usize,
        n_shards: usize,
        seed: u64,
    ) -> Result<()> {
        let data = dataset.shard(scheme, shard, n_shards, seed)?;
        self.insert(dataset.name(), data, seed)
    }

    pub fn get(&self, name: &str) -> Option<&LocalData> {
        self.datasets.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.datasets.is_empty()
    }

    /// Writes each dataset's local train and test split as `NAME.train.csv` and `NAME.test.csv`
    /// in `dir` (made if missing): the exact rows this client trains and tests on, so a client
    /// written in another language can hold the same data (see `Dataset::to_csv` for the form).
    /// Returns the files written.
    pub fn export(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| {
            ClientError::Config(format!("--export: cannot create {}: {e}", dir.display()))
        })?;
        let mut written = Vec::new();
        for (name, d) in &self.datasets {
            for (part, data) in [("train", &d.train), ("test", &d.test)] {
                let path = dir.join(format!("{name}.{part}.csv"));
                data.to_csv(&path)?;
                written.push(path);
            }
        }
        Ok(written)
    }

    /// What the `Hello` announces: names and sizes only.
    pub fn infos(&self) -> Vec<DatasetInfo> {
        self.datasets
            .iter()
            .map(|(name, d)| {
                let mut classes: Vec<String> = Vec::new();
                for (i, n) in d.train.class_names.iter().enumerate() {
                    let present = d.train.labels.contains(&i) || d.test.labels.contains(&i);
                    if present {
                        classes.push(n.clone());
                    }
                }
                DatasetInfo {
                    name: name.clone(),
                    train_examples: d.train.n_rows() as u64,
                    test_examples: d.test.n_rows() as u64,
                    feature_names: d.train.feature_names.clone(),
                    class_names: classes,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_shard_is_split_and_announced() {
        let mut c = Catalog::new();
        c.add_builtin(Builtin::Digits, &Partitioner::Iid, 0, 10, 42)
            .unwrap();
        let d = c.get("digits").unwrap();
        let info = &c.infos()[0];
        assert_eq!(info.name, "digits");
        assert_eq!(info.feature_names.len(), 64);
        assert_eq!(
            info.train_examples + info.test_examples,
            (d.train.n_rows() + d.test.n_rows()) as u64
        );
        assert!(d.test.n_rows() > 0 && d.train.n_rows() > d.test.n_rows());
        assert!(c
            .add_builtin(Builtin::Digits, &Partitioner::Iid, 1, 10, 42)
            .is_err());
    }

    /// The exported split reads back as the very rows the client holds.
    #[test]
    fn export_writes_the_local_split_exactly() {
        let mut c = Catalog::new();
        c.add_builtin(Builtin::Iris, &Partitioner::Iid, 1, 3, 7)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("shoal-export-{}", std::process::id()));
        let files = c.export(&dir).unwrap();
        assert_eq!(files.len(), 2);
        let d = c.get("iris").unwrap();
        for (file, part) in files.iter().zip([&d.train, &d.test]) {
            let back = csv::load_csv(file, Some("label")).unwrap();
            let back = back.remap_classes(&part.class_names).unwrap();
            assert_eq!(back.features, part.features, "{}", file.display());
            assert_eq!(back.labels, part.labels);
            assert_eq!(back.feature_names, part.feature_names);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
