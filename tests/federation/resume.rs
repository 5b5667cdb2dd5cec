//! Crash-resume: jobs that go on after a coordinator restart from their checkpoint.

use super::*;

/// A diffusion job resumes after a graceful coordinator restart (SIGTERM, a rolling update) from
/// its last checkpoint, and ends with the same model and samples as an uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diffusion_job_resumes_after_a_coordinator_restart() {
    let spec = "kind = \"diffusion\"\ndataset = \"signals\"\nrounds = 8\n\
                [model]\nkind = \"denoiser\"\nhidden = [64]\nembed_dim = 8\n\
                [local]\nepochs = 3\nlr = 0.1\n\
                [clients]\nmin_fit_clients = 3\nmin_available_clients = 3\nmin_evaluate_clients = 3\n\
                [diffusion]\nsamples = 12\n";
    let files = ["model.json", "generated.csv"];
    let plain = run_with_restart(spec, Builtin::Signals, 3, None, &files).await;
    let resumed = run_with_restart(spec, Builtin::Signals, 3, Some(3), &files).await;
    assert_eq!(
        plain.rounds,
        (1..=8).collect::<Vec<_>>(),
        "every round once"
    );
    assert_eq!(resumed.rounds, plain.rounds, "every round once");
    let model = |r: &Restarted| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&r.files[0]).unwrap()["global"].clone()
    };
    assert!(
        model(&resumed) == model(&plain)
            && plain.tensors.is_some()
            && resumed.tensors == plain.tensors,
        "the resumed job's model differs"
    );
    assert_eq!(resumed.files[1], plain.files[1]);
}

/// What [`run_with_restart`] saw: the round numbers recorded, each round's metrics but its
/// seconds, and the text of the run-folder files asked for.
pub(super) struct Restarted {
    pub(super) rounds: Vec<u32>,
    pub(super) metrics: Vec<v1::RoundReport>,
    /// Rounds done when the first coordinator was told to stop (with a restart).
    pub(super) stopped_at: Option<u32>,
    files: Vec<String>,
    /// `model.safetensors`: a weights model's final tensors.
    tensors: Option<Vec<u8>>,
}

/// Runs `spec` on a persistent coordinator with `n` clients of `dataset`; with `restart_after`
/// = Some(k), stops the coordinator once k rounds are recorded and starts a new one on the same
/// state dir, which must finish the job.
pub(super) async fn run_with_restart(
    spec: &str,
    dataset: Builtin,
    n: usize,
    restart_after: Option<u32>,
    files: &[&str],
) -> Restarted {
    let (state, runs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut tc = TestCoordinator::start_persistent("127.0.0.1:0", state.path(), runs.path()).await;
    let addr = tc.url.trim_start_matches("http://").to_string();
    let clients: Vec<_> = (0..n)
        .map(|i| start_client(&tc.url, dataset, Partitioner::Iid, i, n))
        .collect();
    tc.wait_clients(n).await;
    let mut jobs = tc.jobs().await;
    let id = submit(&mut jobs, spec).await;
    let mut stopped_at = None;
    if let Some(k) = restart_after {
        while tc.coord.job_info(&id).unwrap().rounds_done < k {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        stopped_at = Some(tc.coord.job_info(&id).unwrap().rounds_done);
        tc.stop().await;
        tc = TestCoordinator::start_persistent(&addr, state.path(), runs.path()).await;
        jobs = tc.jobs().await;
    }
    let (info, rounds) = finish(&mut jobs, &id, 180).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    let dir = std::path::Path::new(&info.run_dir);
    let files = files
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect();
    let tensors = std::fs::read(dir.join("model.safetensors")).ok();
    for (stop, _) in clients {
        stop.cancel();
    }
    tc.stop().await;
    Restarted {
        stopped_at,
        tensors,
        rounds: rounds.iter().map(|r| r.round).collect(),
        metrics: rounds
            .into_iter()
            .map(|r| v1::RoundReport {
                seconds: 0.0,
                job_id: String::new(),
                ..r
            })
            .collect(),
        files,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fusion_job_resumes_at_the_variant_and_round_it_reached() {
    // 4 rounds per variant; the restart comes after round 6, in the middle of the second variant.
    let spec = "kind = \"fusion\"\ndataset = \"multimodal\"\nrounds = 4\n\
                [model]\nkind = \"logreg\"\n[local]\nlr = 0.02\nmomentum = 0.9\n\
                [clients]\nmin_fit_clients = 3\nmin_available_clients = 3\nmin_evaluate_clients = 3\n";
    let files = ["fusion.md"];
    let plain = run_with_restart(spec, Builtin::Multimodal, 3, None, &files).await;
    let resumed = run_with_restart(spec, Builtin::Multimodal, 3, Some(6), &files).await;
    let total = plain.rounds.len() as u32;
    assert!(total >= 20, "{total} rounds");
    assert_eq!(plain.rounds, (1..=total).collect::<Vec<_>>());
    assert_eq!(resumed.rounds, plain.rounds, "every round once");
    assert_eq!(resumed.metrics, plain.metrics);
    // Every variant, late fusion and learned late fusion included, scores the same.
    assert!(
        plain.files[0].contains("learned late fusion")
            && plain.files[0].contains("| late fusion |")
    );
    assert_eq!(resumed.files[0], plain.files[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_automl_job_resumes_with_the_trials_not_yet_finished() {
    // TPE one trial at a time (its proposals depend on the history, so the order is fixed) and
    // successive halving two at a time (running trials start again; rungs carry over).
    for (search, parallel, trials) in [("tpe", 1, 6), ("halving", 2, 9)] {
        let spec = format!(
            "kind = \"automl\"\ndataset = \"digits\"\nrounds = 3\n\
             [clients]\nmin_available_clients = 3\n\
             [automl]\nsearch = \"{search}\"\ntrials = {trials}\nparallel_trials = {parallel}\n\
             [automl.space]\n\"local.lr\" = {{ low = 0.001, high = 1.0, log = true }}\n\"local.epochs\" = [1, 2]\n"
        );
        let files = ["trials.csv", "model.json"];
        let plain = run_with_restart(&spec, Builtin::Digits, 3, None, &files).await;
        let resumed = run_with_restart(&spec, Builtin::Digits, 3, Some(3), &files).await;
        assert_eq!(resumed.rounds, plain.rounds, "{search}: every trial once");
        // Seconds differ between runs; every other column of the trial table must not.
        let table = |r: &Restarted| -> Vec<String> {
            r.files[0]
                .lines()
                .map(|l| {
                    let cols: Vec<&str> = l.split(',').collect();
                    format!(
                        "{} {}",
                        cols[..cols.len() - 2].join(","),
                        cols[cols.len() - 1]
                    )
                })
                .collect()
        };
        assert_eq!(table(&resumed), table(&plain), "{search}: trial table");
        let model =
            |r: &Restarted| -> serde_json::Value { serde_json::from_str(&r.files[1]).unwrap() };
        assert!(
            model(&resumed) == model(&plain)
                && plain.tensors.is_some()
                && resumed.tensors == plain.tensors,
            "{search}: best model differs"
        );
    }
}

/// S10: a job that failed because every client was gone for longer than its wait (an outage of
/// all clients) lost its checkpointed rounds for good: a failed job was never resumed. `Resume`
/// now goes on from the last checkpoint once the clients are back, and the job ends as the
/// undisturbed run does, every round once. A finished or running job is refused, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failed_by_an_outage_of_all_clients_resumes_from_its_checkpoint() {
    let spec = "kind = \"train\"\ndataset = \"digits\"\nrounds = 5\n\
                [clients]\nmin_fit_clients = 2\nmin_available_clients = 2\nmin_evaluate_clients = 2\n\
                wait_for_clients_secs = 1\n[evaluation]\ncentralized_baseline = false\n";
    let tc = TestCoordinator::start().await;
    let start = || {
        (0..2)
            .map(|i| start_client(&tc.url, Builtin::Digits, Partitioner::Iid, i, 2))
            .collect::<Vec<_>>()
    };
    let stop = |clients: Vec<(tokio_util::sync::CancellationToken, _)>| async move {
        for (s, h) in clients {
            s.cancel();
            let _ = h.await;
        }
    };
    let mut jobs = tc.jobs().await;
    let clients = start();
    tc.wait_clients(2).await;
    let calm = submit(&mut jobs, spec).await;
    let (info, calm_rounds) = finish(&mut jobs, &calm, 60).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    let refused = jobs
        .resume(v1::ResumeRequest {
            job_id: calm.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("finished"),
        "{}",
        refused.message()
    );

    let id = submit(&mut jobs, spec).await;
    while tc.coord.job_info(&id).unwrap().rounds_done < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    stop(clients).await;
    let (info, _) = finish(&mut jobs, &id, 60).await;
    assert_eq!(info.status, v1::JobStatus::Failed as i32, "{info:?}");
    let done = info.rounds_done;
    assert!((2..5).contains(&done), "{info:?}");

    let clients = start();
    tc.wait_clients(2).await;
    let resumed = jobs
        .resume(v1::ResumeRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.rounds_done, done);
    assert!(resumed.error.is_empty(), "{resumed:?}");
    let again = jobs
        .resume(v1::ResumeRequest { job_id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    let (info, rounds) = finish(&mut jobs, &id, 60).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    let figures = |r: &[v1::RoundReport]| -> Vec<(u32, u32, f64, Option<f64>)> {
        r.iter()
            .map(|r| (r.round, r.clients, r.train_loss, r.test_accuracy))
            .collect()
    };
    assert_eq!(figures(&rounds), figures(&calm_rounds));
    stop(clients).await;
    tc.stop().await;
}

/// S10 #7: every coordinator restart in the end-of-job phase (client table, centralized
/// baseline: 9 to 24 s) started it again. Its results are now kept in the state store as each
/// step ends, and a job resumed in that phase reuses them: here a kept client table (marked, so
/// it can be told from a new one) ends up in the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_resumed_after_its_last_round_reuses_what_its_end_phase_kept() {
    let (state, runs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut tc = TestCoordinator::start_persistent("127.0.0.1:0", state.path(), runs.path()).await;
    let addr = tc.url.trim_start_matches("http://").to_string();
    let clients: Vec<_> = (0..2)
        .map(|i| start_client(&tc.url, Builtin::Digits, Partitioner::Iid, i, 2))
        .collect();
    tc.wait_clients(2).await;
    let mut jobs = tc.jobs().await;
    let id = submit(
        &mut jobs,
        &digits_job(2, 2, "[evaluation]\ncentralized_baseline = false\n"),
    )
    .await;
    let (info, _) = finish(&mut jobs, &id, 60).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    let summary = |dir: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(std::path::Path::new(dir).join("summary.json")).unwrap(),
        )
        .unwrap()
    };
    let mut table = summary(&info.run_dir)["clients"].clone();
    assert_eq!(table.as_array().unwrap().len(), 2, "{table}");
    table[0]["client"] = "kept-before-the-restart".into();
    // As if the coordinator had stopped after the end phase's first step.
    let store = tc.coord.store().clone();
    store
        .save_end_result(&id, "client_table", &table.to_string())
        .unwrap();
    store
        .set_status(&id, shoal_coordinator::state::JobStatus::Running, None)
        .unwrap();
    tc.stop().await;
    drop(store);
    tc = TestCoordinator::start_persistent(&addr, state.path(), runs.path()).await;
    let mut jobs = tc.jobs().await;
    let (info, rounds) = finish(&mut jobs, &id, 60).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert_eq!(
        rounds.iter().map(|r| r.round).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        summary(&info.run_dir)["clients"][0]["client"],
        "kept-before-the-restart"
    );
    for (stop, _) in clients {
        stop.cancel();
    }
    tc.stop().await;
}
