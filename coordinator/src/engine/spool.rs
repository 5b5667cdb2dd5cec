//! The coordinator's spool: a round's updates on disk, in an unnamed temporary file, so that the
//! influence limits can correct the few they cut down at the round's end while memory holds one
//! update at a time (see [`shoal_shared::spool`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use shoal_shared::spool::{MemorySpool, Spool, SpoolMaker};
use shoal_shared::tensor::Weights;
use shoal_shared::{Error, Result};

/// Values converted and written (or read) at a time.
const BLOCK: usize = 1 << 14;

/// Updates as raw little-endian `f32`, one after the other, in a file that the system deletes
/// when it is closed (or the process dies). What cannot be written is kept in memory instead.
#[derive(Debug)]
pub struct FileSpool {
    dir: PathBuf,
    file: Option<File>,
    /// Where each client's update starts in the file, and whether a control delta follows it.
    at: HashMap<String, (u64, bool)>,
    end: u64,
    fallback: MemorySpool,
    warned: bool,
}

impl FileSpool {
    pub fn new(dir: &Path) -> FileSpool {
        FileSpool {
            dir: dir.to_path_buf(),
            file: None,
            at: HashMap::new(),
            end: 0,
            fallback: MemorySpool::default(),
            warned: false,
        }
    }

    /// A maker of file spools in `dir`.
    pub fn maker(dir: &Path) -> SpoolMaker {
        let dir = dir.to_path_buf();
        SpoolMaker::new(move || Box::new(FileSpool::new(&dir)))
    }

    fn write(&mut self, update: &Weights, control: Option<&Weights>) -> std::io::Result<u64> {
        if self.file.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            self.file = Some(tempfile::tempfile_in(&self.dir)?);
        }
        let file = self.file.as_mut().expect("opened above");
        file.seek(SeekFrom::Start(self.end))?;
        // Converted a block at a time: one write per 64 KiB, not one call per value.
        let mut block = vec![0u8; BLOCK * 4];
        let mut bytes = 0u64;
        for w in std::iter::once(update).chain(control) {
            for t in &w.tensors {
                for values in t.data.chunks(BLOCK) {
                    for (b, v) in block.chunks_exact_mut(4).zip(values) {
                        b.copy_from_slice(&v.to_le_bytes());
                    }
                    file.write_all(&block[..4 * values.len()])?;
                }
            }
            bytes += 4 * w.num_params() as u64;
        }
        let start = self.end;
        self.end += bytes;
        Ok(start)
    }
}

impl Spool for FileSpool {
    fn put(&mut self, client: &str, update: &Weights, control: Option<&Weights>) {
        match self.write(update, control) {
            Ok(start) => {
                self.at
                    .insert(client.to_string(), (start, control.is_some()));
            }
            Err(e) => {
                if !self.warned {
                    tracing::warn!(dir = %self.dir.display(), error = %e,
                        "cannot spool updates to disk; keeping this round's in memory");
                    self.warned = true;
                }
                self.fallback.put(client, update, control);
            }
        }
    }

    fn get(&mut self, client: &str, layout: &Weights) -> Result<(Weights, Option<Weights>)> {
        let Some(&(start, with_control)) = self.at.get(client) else {
            return self.fallback.get(client, layout);
        };
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::Data("the update spool is not open".into()))?;
        let io = |e: std::io::Error| {
            Error::Data(format!(
                "cannot read `{client}`'s update back from the spool in {}: {e}",
                self.dir.display()
            ))
        };
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut block = vec![0u8; BLOCK * 4];
        let mut read = |into: &mut Weights| -> std::io::Result<()> {
            for t in &mut into.tensors {
                for values in t.data.chunks_mut(BLOCK) {
                    let bytes = &mut block[..4 * values.len()];
                    file.read_exact(bytes)?;
                    for (v, b) in values.iter_mut().zip(bytes.chunks_exact(4)) {
                        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
            }
            Ok(())
        };
        let mut w = layout.zeros_like();
        read(&mut w).map_err(io)?;
        let control = if with_control {
            let mut c = layout.zeros_like();
            read(&mut c).map_err(io)?;
            Some(c)
        } else {
            None
        };
        Ok((w, control))
    }

    fn clear(&mut self) {
        self.at.clear();
        self.end = 0;
        self.fallback.clear();
        // Give the disk space back; the file itself is reused.
        if let Some(f) = &self.file {
            if let Err(e) = f.set_len(0) {
                tracing::debug!(error = %e, "cannot truncate the update spool");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_shared::tensor::Tensor;

    fn w(vals: &[f32]) -> Weights {
        Weights::new(vec![
            Tensor::new("a", vec![1], vals[..1].to_vec()).unwrap(),
            Tensor::new("b", vec![vals.len() - 1], vals[1..].to_vec()).unwrap(),
        ])
    }

    #[test]
    fn updates_come_back_as_they_went_in_and_a_cleared_spool_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileSpool::new(dir.path());
        let layout = w(&[0.0; 3]);
        s.put("a", &w(&[1.0, 2.0, 3.0]), None);
        s.put("b", &w(&[4.0, 5.0, -6.5]), Some(&w(&[7.0, 8.0, 9.0])));
        assert_eq!(
            s.get("b", &layout).unwrap(),
            (w(&[4.0, 5.0, -6.5]), Some(w(&[7.0, 8.0, 9.0])))
        );
        assert_eq!(s.get("a", &layout).unwrap(), (w(&[1.0, 2.0, 3.0]), None));
        // The file is unnamed: nothing is left in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        s.clear();
        assert!(s.get("a", &layout).is_err());
        s.put("c", &w(&[0.5, 0.25, 0.125]), None);
        assert_eq!(s.get("c", &layout).unwrap().0, w(&[0.5, 0.25, 0.125]));
    }

    #[test]
    fn a_spool_that_cannot_write_keeps_updates_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, "not a folder").unwrap();
        let mut s = FileSpool::new(&blocked.join("spool"));
        s.put("a", &w(&[1.0, 2.0]), None);
        assert_eq!(s.get("a", &w(&[0.0, 0.0])).unwrap().0, w(&[1.0, 2.0]));
    }
}
