//! Buffered asynchronous steps (FedBuff) of a train job with an `[async]` section: the
//! coordinator keeps `concurrency` clients training, each from the global model of the moment,
//! takes their updates as they come, and steps the global model every `buffer_size` updates
//! through the model's server half (the same strategies, limits and checkpoints as a round). An
//! update from a model `τ` steps old is rebased onto the current model with weight `s(τ)`
//! ([`shoal_shared::strategy::buffered`]); one older than `max_staleness` steps is set aside as
//! late. No step waits for a slow client: its update lands in a later step, stale.
//!
//! A client has at most one task in flight and one update in a step (the server half keys a
//! step's updates by client); it is sent its next task once its update is in and the step it
//! joined has closed. Tasks still in flight when the job ends, or when the coordinator stops,
//! are forgotten; a resumed job sends new ones from its checkpoint.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use shoal_proto::tasks;
use shoal_shared::models::phase::{Payload, PhaseTally, Rejection, Reply, RoundPlan, Step};
use shoal_shared::seed;
use shoal_shared::strategy::buffered::{rebase, Staleness};
use shoal_shared::tensor::Weights;
use shoal_shared::text::{clip, TEXT_CHARS};
use tokio::time::Instant;
use tracing::{info, info_span, warn, Instrument};

use crate::engine::registry::{Arrived, Registry};
use crate::engine::round::{
    sample_n, unix_ms, JobCtx, Phase, RoundDone, RoundRecord, TrainState, SEED_TASK,
};
use crate::error::{Error, Result};

/// Mixed into the seed that picks which idle clients get the next tasks.
const SEED_PICK: u64 = 5;

/// The tasks of an asynchronous job in flight, kept from step to step.
#[derive(Default)]
pub struct Flight {
    waiting: FuturesUnordered<BoxFuture<'static, (Sent, Outcome)>>,
    /// Clients with a task in flight.
    busy: BTreeSet<String>,
    /// Those tasks' ids, to forget when the job ends.
    task_ids: BTreeSet<String>,
    /// Tasks sent so far by this process (seeds the choice of clients).
    dispatched: u64,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("busy", &self.busy)
            .field("dispatched", &self.dispatched)
            .finish()
    }
}

impl Flight {
    /// Forgets every task still in flight: their answers come back as late, and are refused.
    pub fn abandon(&mut self, registry: &Registry) {
        let ids: Vec<String> = std::mem::take(&mut self.task_ids).into_iter().collect();
        registry.forget(&ids);
        self.busy.clear();
        self.waiting = FuturesUnordered::new();
    }
}

/// One task in flight.
struct Sent {
    client: String,
    task_id: String,
    /// The step it was sent in; it carries the model that step started from.
    step: u32,
    base: Arc<Weights>,
    /// Whether it went onto the client's stream, and its size.
    went: Arc<AtomicBool>,
    size: u64,
}

enum Outcome {
    Arrived(Arrived),
    /// The client left before answering.
    Left,
    /// No answer by the task's deadline (`clients.round_timeout_secs`).
    TimedOut,
}

impl JobCtx {
    /// Runs asynchronous step `step` and returns its record; `state.global` becomes the new
    /// global model. `flight` carries the tasks still out from earlier steps.
    pub async fn buffered_step(
        &self,
        step: u32,
        state: &mut TrainState,
        flight: &mut Flight,
    ) -> Result<RoundRecord> {
        let span = info_span!("step", job = %self.id, step);
        let out = self
            .buffered_step_inner(step, state, flight)
            .instrument(span)
            .await;
        if out.is_err() {
            flight.abandon(&self.registry);
        }
        out
    }

    async fn buffered_step_inner(
        &self,
        step: u32,
        state: &mut TrainState,
        flight: &mut Flight,
    ) -> Result<RoundRecord> {
        let started = Instant::now();
        let opts =
            self.spec.asynchronous.clone().ok_or_else(|| {
                Error::Job("an asynchronous step of a job without [async]".into())
            })?;
        let staleness = self.spec.staleness().unwrap_or(Staleness::Constant);
        let buffer = opts.buffer_size as usize;
        let avail = self.wait_available(step, Some(&state.facts)).await?;
        let announced = self.announced(&avail, false);
        let names: Vec<String> = avail.iter().map(|c| c.name.clone()).collect();
        // The step's sums are sized for every available client: any of them may send one of
        // its updates.
        let plan = RoundPlan {
            round: step,
            announced: names
                .iter()
                .map(|n| announced.get(n).copied().unwrap_or(0))
                .collect(),
            selected: names.clone(),
            available: names,
            quorum: 1,
            min_clients: 1,
            target: None,
            n_available: avail.len(),
        };
        let training = self.spec.model.kind().training_tasks();
        let TrainState {
            facts,
            global,
            encoded,
        } = state;
        let Step::Ask(ask) = global.begin_round(plan)? else {
            return Err(Error::Job(format!(
                "step {step}: model kind `{}` does not train from the global model, which [async] needs",
                self.spec.model.name()
            )));
        };
        let Payload::Weights(current) = &ask.payload else {
            return Err(Error::Job(format!(
                "step {step}: [async] steps a weights model, and model kind `{}` has none",
                self.spec.model.name()
            )));
        };
        let current = Arc::clone(current);
        let expected = tasks::expected_reply(&ask.request);
        let kind = self.request_kind(ask.request, step);
        let payload = encoded.payload(ask.payload);
        let bounds = global.decode_bounds();
        let timeout = std::time::Duration::from_secs_f64(self.spec.clients.round_timeout_secs);
        let max_bytes = self.max_transfer_bytes.max(self.max_message_bytes as u64);

        let mut phase = Phase::default();
        // Clients whose update is in this step: their next task waits for the next step.
        let mut contributed = BTreeSet::new();
        let mut selected = 0usize;
        let mut ages = 0u64;
        let mut changes = self.registry.subscribe();
        let mut short_since: Option<Instant> = None;
        while phase.accepted < buffer {
            let eligible: Vec<_> = self
                .candidates(training)
                .into_iter()
                .filter(|c| self.fits(c, facts) && !self.is_quarantined(&c.name))
                .collect();
            let idle: Vec<_> = eligible
                .iter()
                .filter(|c| !flight.busy.contains(&c.name) && !contributed.contains(&c.name))
                .cloned()
                .collect();
            let room = (opts.concurrency as usize).saturating_sub(flight.busy.len());
            if room > 0 && !idle.is_empty() {
                let pick =
                    seed::derive(self.spec.seed, &[step.into(), flight.dispatched, SEED_PICK]);
                for c in sample_n(&idle, room, pick) {
                    flight.dispatched += 1;
                    let task_seed = seed::derive(
                        self.spec.seed,
                        &[
                            step.into(),
                            seed::stable_hash(&c.name),
                            flight.dispatched,
                            SEED_TASK,
                        ],
                    );
                    let deadline_ms = unix_ms().saturating_add(timeout.as_millis() as u64);
                    let task = self.task(
                        step,
                        &c.name,
                        &kind,
                        &payload,
                        facts,
                        deadline_ms,
                        task_seed,
                    );
                    let size = prost::Message::encoded_len(&task) as u64;
                    if size > max_bytes {
                        return Err(Error::Job(format!(
                            "a task for step {step} would be {size} bytes, over the coordinator's transfer limit of {max_bytes} bytes (--max-transfer-bytes)"
                        )));
                    }
                    let task_id = task.task_id.clone();
                    match self.registry.dispatch(&c.name, task) {
                        Ok(delivery) => {
                            selected += 1;
                            let sent = Sent {
                                client: c.name.clone(),
                                task_id: task_id.clone(),
                                step,
                                base: Arc::clone(&current),
                                went: delivery.sent(),
                                size,
                            };
                            flight.busy.insert(c.name.clone());
                            flight.task_ids.insert(task_id);
                            let deadline = Instant::now() + timeout;
                            flight.waiting.push(Box::pin(async move {
                                let outcome =
                                    match tokio::time::timeout_at(deadline, delivery).await {
                                        Ok(Some(arrived)) => Outcome::Arrived(arrived),
                                        Ok(None) => Outcome::Left,
                                        Err(_) => Outcome::TimedOut,
                                    };
                                (sent, outcome)
                            }));
                        }
                        Err(e) => {
                            warn!(client = %c.name, "{e}");
                            phase.failed += 1;
                        }
                    }
                }
            }
            // One update per client per step: with fewer clients than the buffer still to give
            // one, the step waits for more to connect, up to `wait_for_clients_secs`.
            let can_give = eligible
                .iter()
                .filter(|c| !contributed.contains(&c.name))
                .count();
            let short = phase.accepted + can_give < buffer;
            if short {
                short_since.get_or_insert_with(Instant::now);
            } else {
                short_since = None;
            }
            let wait = std::time::Duration::from_secs_f64(self.spec.clients.wait_for_clients_secs);
            let give_up = short_since.map(|t| t + wait);
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Err(Error::Cancelled),
                _ = async { tokio::time::sleep_until(give_up.unwrap_or_else(Instant::now)).await }, if give_up.is_some() => {
                    return Err(Error::Job(format!(
                        "step {step}: async.buffer_size = {buffer} needs updates from {buffer} different clients, but {} have given one and only {can_give} more holding dataset `{}` are connected after waiting {}s (clients.wait_for_clients_secs); lower async.buffer_size or connect more clients",
                        phase.accepted, self.spec.dataset, self.spec.clients.wait_for_clients_secs
                    )));
                }
                Some((sent, outcome)) = flight.waiting.next() => {
                    flight.busy.remove(&sent.client);
                    flight.task_ids.remove(&sent.task_id);
                    if sent.went.load(Ordering::Acquire) {
                        phase.bytes_down += sent.size;
                    }
                    let client = sent.client.clone();
                    match outcome {
                        Outcome::Arrived(arrived) => {
                            phase.answered.insert(client.clone());
                            phase.bytes_up += arrived.bytes;
                            let age = step.saturating_sub(sent.step);
                            if let Some(why) = self.misaddressed(&arrived.result, sent.step) {
                                self.refuse(&mut phase, &client, step, &why.to_string());
                            } else if age > opts.max_staleness {
                                info!(client = %client, age, "update set aside: its model is older than async.max_staleness steps");
                                *phase.late_by.entry(client.clone()).or_default() += 1;
                            } else {
                                let verdict = tasks::reply_from_wire(
                                    arrived.result.outcome,
                                    bounds,
                                    expected,
                                    Some(&sent.base),
                                )
                                .and_then(|reply| rebased(reply, &sent.base, &current, staleness.weight(age)))
                                .and_then(|reply| global.accept(&client, reply, announced.get(&client).copied()));
                                match verdict {
                                    Ok(()) => {
                                        phase.accepted += 1;
                                        ages += u64::from(age);
                                        contributed.insert(client);
                                    }
                                    Err(reason) => {
                                        let why = clip(&reason.to_string(), 4 * TEXT_CHARS);
                                        self.refuse(&mut phase, &client, step, &why);
                                    }
                                }
                            }
                        }
                        Outcome::Left => {
                            phase.failed += 1;
                            warn!(client = %client, "client left before answering");
                        }
                        Outcome::TimedOut => {
                            phase.timed_out += 1;
                            phase.silent.insert(client.clone());
                            self.registry.forget(std::slice::from_ref(&sent.task_id));
                            warn!(client = %client, "no answer by the task's deadline (clients.round_timeout_secs)");
                        }
                    }
                }
                changed = changes.changed() => if changed.is_err() { return Err(Error::ShuttingDown) },
            }
        }
        let accepted_in_buffer = phase.accepted;
        let done = match global.close(PhaseTally {
            accepted: phase.accepted,
            rejected: phase.rejected,
            failed: phase.failed,
            timed_out: phase.timed_out,
        })? {
            Step::Done(r) => r,
            Step::Ask(_) => {
                return Err(Error::Job(format!(
                    "step {step}: model kind `{}` asks for another phase, which [async] cannot run",
                    self.spec.model.name()
                )))
            }
        };
        for (client, why) in &done.refused {
            self.refuse(&mut phase, client, step, why);
        }
        let last = step == self.spec.rounds;
        if last {
            // Updates still to come would start from older models than any step will take.
            flight.abandon(&self.registry);
        }
        // Federated evaluation only after the last step: in the middle of a job it would queue
        // behind training tasks and wait for the slowest clients, which is what [async] avoids.
        let scores = self.score_round(step, state, last).await?;
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let mut rec = self.round_record(
            RoundDone {
                round: step,
                accepted: done.accepted,
                selected,
                train_loss: done.train_loss,
                started,
            },
            &phase,
            scores,
        );
        rec.staleness = Some(ages as f64 / accepted_in_buffer.max(1) as f64);
        Ok(rec)
    }
}

/// A fit reply's parameters, trained from `base`, as an update of `current` with weight
/// `weight` (see [`rebase`]).
fn rebased(
    reply: Reply,
    base: &Weights,
    current: &Weights,
    weight: f64,
) -> std::result::Result<Reply, Rejection> {
    let Reply::Fit(mut fit) = reply else {
        return Err(Rejection::WrongKind("a fit result"));
    };
    if let Some(p) = &mut fit.parameters {
        rebase(p, base, current, weight).map_err(Rejection::invalid)?;
    }
    Ok(Reply::Fit(fit))
}
