//! `[async]`: buffered asynchronous steps (FedBuff) against synchronous rounds.

use super::*;
use shoal_coordinator::simulate::{Delays, SimulateOptions};

/// Digits, logreg, 10 Dirichlet clients: `rounds` synchronous rounds, or `rounds` asynchronous
/// steps with `async_section`, every client holding each training result 40 ms and the first two
/// five times as long.
async fn digits_with_stragglers(rounds: u32, async_section: &str) -> Vec<v1::RoundReport> {
    let toml = format!(
        "kind = \"train\"\ndataset = \"digits\"\nrounds = {rounds}\nseed = 5\n\
         [evaluation]\ncentralized_baseline = false\n{async_section}"
    );
    let spec = shoal_coordinator::spec::CheckedSpec::from_toml(&toml)
        .unwrap()
        .into_spec();
    let mut o = SimulateOptions::new(spec, Builtin::Digits);
    o.clients = 10;
    o.scheme = "dirichlet:0.5".parse().unwrap();
    o.delays = Delays {
        fit_delay: std::time::Duration::from_millis(40),
        stragglers: 2,
        slowdown: 5.0,
    };
    crate::util::simulate_finished(o, &toml)
        .await
        .outcome
        .rounds
}

/// With 2 of 10 clients five times slower, asynchronous steps take the updates as they come:
/// every step applies `buffer_size` of them, some from older models (stale, and weighted down),
/// and the job reaches the synchronous run's final accuracy. Wall times are printed, not
/// asserted (`study async` measures them; docs/guide/scale.md has the figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_steps_take_updates_as_they_come_and_reach_the_sync_accuracy() {
    let sync = digits_with_stragglers(10, "").await;
    let target = sync.last().unwrap().test_accuracy.unwrap();
    assert!(target > 0.8, "sync accuracy {target}");
    assert!(sync.iter().all(|r| r.staleness.is_none()));
    let steps = digits_with_stragglers(40, "[async]\nconcurrency = 10\nbuffer_size = 5\n").await;
    assert_eq!(steps.len(), 40);
    for s in &steps {
        assert_eq!(s.clients, 5, "step {}: {} updates", s.round, s.clients);
        assert!(s.staleness.is_some(), "step {} has no staleness", s.round);
    }
    // Ten in flight and five a step: the rest of each step's tasks land in the next, one step
    // old at least, and the stragglers' several steps old.
    assert!(
        steps.iter().any(|s| s.staleness.unwrap() > 0.0),
        "no stale update was taken"
    );
    let seconds = |r: &[v1::RoundReport]| r.iter().map(|r| r.seconds).sum::<f64>();
    let mut elapsed = 0.0;
    let reached = steps.iter().find(|s| {
        elapsed += s.seconds;
        s.test_accuracy.is_some_and(|a| a >= target)
    });
    let reached = reached.unwrap_or_else(|| {
        panic!(
            "async never reached the sync accuracy {target}: {:?}",
            steps.iter().map(|s| s.test_accuracy).collect::<Vec<_>>()
        )
    });
    eprintln!(
        "sync: {target:.3} after {:.2} s; async: reached it at step {} after {elapsed:.2} s ({:.2}x the sync time)",
        seconds(&sync),
        reached.round,
        elapsed / seconds(&sync)
    );
}

/// An update from a model more than `max_staleness` steps old is set aside as late: shown in
/// the step's refusals, never a strike, and the job goes on with fresher ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_older_than_max_staleness_are_set_aside_as_late() {
    let toml = "kind = \"train\"\ndataset = \"digits\"\nrounds = 4\nseed = 5\n\
                [clients]\nmin_available_clients = 4\n\
                [evaluation]\ncentralized_baseline = false\n\
                [async]\nconcurrency = 4\nbuffer_size = 2\nmax_staleness = 0\n";
    let spec = shoal_coordinator::spec::CheckedSpec::from_toml(toml)
        .unwrap()
        .into_spec();
    let mut o = SimulateOptions::new(spec, Builtin::Digits);
    o.clients = 4;
    let steps = crate::util::simulate_finished(o, toml).await.outcome.rounds;
    assert_eq!(steps.len(), 4);
    // Step 1 closes with two of its four tasks still out: they answer in step 2, one step old.
    let late: u32 = steps.iter().flat_map(|s| s.late_by.values()).sum();
    assert!(late > 0, "no update was set aside: {steps:?}");
    for s in &steps {
        assert_eq!(s.clients, 2, "step {}", s.round);
        assert_eq!(
            s.staleness,
            Some(0.0),
            "step {} took a stale update",
            s.round
        );
        assert!(
            s.quarantined.is_empty(),
            "late answers quarantined {:?}",
            s.quarantined
        );
    }
}

/// A coordinator restart in the middle of an asynchronous job: the job goes on from its last
/// step's checkpoint, sends new tasks (those in flight went with the old process), and records
/// every step once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_job_resumes_from_its_last_step() {
    let spec = "kind = \"train\"\ndataset = \"digits\"\nrounds = 30\n\
                [clients]\nmin_available_clients = 3\nmin_fit_clients = 2\nmin_evaluate_clients = 2\n\
                [evaluation]\ncentralized_baseline = false\n\
                [async]\nconcurrency = 3\nbuffer_size = 2\n";
    let resumed = super::resume::run_with_restart(spec, Builtin::Digits, 3, Some(2), &[]).await;
    let stopped = resumed.stopped_at.unwrap();
    assert!(
        stopped < 30,
        "the job ended before the restart ({stopped} steps)"
    );
    assert_eq!(
        resumed.rounds,
        (1..=30).collect::<Vec<_>>(),
        "every step once"
    );
    for m in &resumed.metrics {
        assert_eq!(m.clients, 2, "step {}", m.round);
        assert!(m.staleness.is_some(), "step {}", m.round);
    }
    assert!(resumed.metrics.last().unwrap().test_accuracy.unwrap() > 0.5);
}
