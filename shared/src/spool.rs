//! Where a server half keeps a round's updates that it may need again when the round closes.
//!
//! A weights model adds each update to the round's exact fixed-point sums as it arrives and lets
//! it go. The job's influence limits (`[updates] weight_cap`, `adaptive_norm`, `refuse_norm`)
//! depend on the round's medians, known only at the end; the few updates they cut down are then
//! read back, taken out of the sums exactly and put in again corrected. A [`Spool`] keeps them
//! meanwhile: [`MemorySpool`] in memory (tests, small models), or the coordinator's file spool,
//! which holds them on disk so that memory stays bounded by the model, not by the clients.
//!
//! Principal types: [`Spool`], [`MemorySpool`], [`SpoolMaker`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::tensor::Weights;
use crate::Result;

/// A round's updates, kept until the round closes.
pub trait Spool: Send + Sync + std::fmt::Debug {
    /// Keeps `client`'s update and control delta. Never loses one: a spool that cannot write
    /// where it keeps them keeps them in memory instead.
    fn put(&mut self, client: &str, update: &Weights, control: Option<&Weights>);

    /// What `put` kept for `client`, its tensors shaped like `layout`.
    fn get(&mut self, client: &str, layout: &Weights) -> Result<(Weights, Option<Weights>)>;

    /// Forgets every update (a new round begins).
    fn clear(&mut self);
}

/// A spool in memory.
#[derive(Debug, Default)]
pub struct MemorySpool {
    kept: HashMap<String, (Weights, Option<Weights>)>,
}

impl Spool for MemorySpool {
    fn put(&mut self, client: &str, update: &Weights, control: Option<&Weights>) {
        self.kept
            .insert(client.to_string(), (update.clone(), control.cloned()));
    }

    fn get(&mut self, client: &str, _layout: &Weights) -> Result<(Weights, Option<Weights>)> {
        self.kept
            .get(client)
            .cloned()
            .ok_or_else(|| crate::Error::Data(format!("no update of `{client}` was kept")))
    }

    fn clear(&mut self) {
        self.kept.clear();
    }
}

/// Makes a job's spool: in memory unless the coordinator gives one of its own.
#[derive(Clone)]
pub struct SpoolMaker(Arc<dyn Fn() -> Box<dyn Spool> + Send + Sync>);

impl SpoolMaker {
    pub fn new(make: impl Fn() -> Box<dyn Spool> + Send + Sync + 'static) -> Self {
        SpoolMaker(Arc::new(make))
    }

    pub fn make(&self) -> Box<dyn Spool> {
        (self.0)()
    }
}

impl Default for SpoolMaker {
    fn default() -> Self {
        SpoolMaker::new(|| Box::<MemorySpool>::default())
    }
}

impl std::fmt::Debug for SpoolMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolMaker")
    }
}
