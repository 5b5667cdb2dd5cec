//! Job kinds: fusion, diffusion, AutoML, and what submission refuses.

use super::*;

async fn submit_err(jobs: &mut shoal_coordinator::cli::AdminJobs, spec: &str) -> tonic::Status {
    jobs.submit(v1::SubmitRequest {
        spec: spec.into(),
        format: "toml".into(),
        initial_parameters: None,
    })
    .await
    .unwrap_err()
}

/// S9 #6: a submitted spec names files on the coordinator's host only under the operator's
/// `--data-dir` (none without it), and a job's error never quotes a file's contents. On the old
/// main a `holdout` anywhere was read and its first bad cell came back in the job's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_named_in_a_job_resolve_only_under_the_data_dir_and_are_never_echoed() {
    const SECRET: &str = "hunter2-TOPSECRET";
    let job = |holdout: &str| {
        format!("kind = \"train\"\ndataset = \"mine\"\nrounds = 1\n[clients]\nmin_available_clients = 1\nmin_fit_clients = 1\nmin_evaluate_clients = 1\n[evaluation]\nholdout = {holdout:?}\n")
    };
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.csv");
    std::fs::write(&secret, format!("password,label\n{SECRET},x\n")).unwrap();

    let tc = TestCoordinator::start().await;
    let mut jobs = tc.jobs().await;
    let err = submit_err(&mut jobs, &job(secret.to_str().unwrap())).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("reads no files named in jobs"),
        "{}",
        err.message()
    );
    tc.stop().await;

    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("bad.csv"),
        format!("password,label\n{SECRET},x\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&secret, data.path().join("link.csv")).unwrap();
    let tc = TestCoordinator::start_with(shoal_coordinator::CoordinatorConfig {
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let mut jobs = tc.jobs().await;
    for (given, says) in [
        (secret.to_str().unwrap(), "without `..`"),
        ("../secret.csv", "without `..`"),
        ("link.csv", "no such file under"),
        ("missing.csv", "no such file under"),
    ] {
        let err = submit_err(&mut jobs, &job(given)).await;
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{given}");
        assert!(err.message().contains(says), "{given}: {}", err.message());
        assert!(!err.message().contains(SECRET));
    }
    // A file under the data dir that is not a CSV: the job fails, and says so without quoting it.
    let data_info = v1::DatasetInfo {
        name: "mine".into(),
        train_examples: 10,
        test_examples: 2,
        feature_names: vec!["password".into()],
        class_names: vec!["x".into()],
    };
    let (models, tasks) = crate::util::builtin_kinds();
    let _peer = RawPeer::with_first(
        &tc.url,
        v1::client_message::Msg::Hello(v1::Hello {
            max_message_bytes: 0,
            max_transfer_bytes: 0,
            protocol_version: shoal_proto::PROTOCOL_VERSION,
            client_name: "holder".into(),
            token: String::new(),
            datasets: vec![data_info],
            model_kinds: models,
            task_kinds: tasks,
        }),
    )
    .await;
    let id = submit(&mut jobs, &job("bad.csv")).await;
    let (info, _) = finish(&mut jobs, &id, 60).await;
    assert_eq!(info.status, v1::JobStatus::Failed as i32);
    assert!(
        info.error.contains("not a usable CSV file"),
        "{}",
        info.error
    );
    assert!(!info.error.contains(SECRET), "{}", info.error);
    tc.stop().await;
}

/// The fusion comparison over 5 clients: every variant trains over the federation, each single
/// modality on its own columns, and the report carries the table and bar chart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fusion_variants_train_over_the_federation_on_their_own_views() {
    use shoal_coordinator::simulate::SimulateOptions;
    let spec =
        shoal_coordinator::spec::CheckedSpec::from_toml(include_str!("../../examples/fusion.toml"))
            .unwrap()
            .into_spec();
    let mut o = SimulateOptions::new(spec, Builtin::Multimodal);
    o.clients = 5;
    o.scheme = Partitioner::Iid;
    let run = crate::util::simulate_finished(o, "").await;
    let outcome = &run.outcome;
    assert_eq!(
        outcome.rounds.len(),
        6 * 20,
        "five trained variants plus learned late fusion"
    );
    let dir = std::path::Path::new(&outcome.job.run_dir);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let acc = |name: &str| -> f64 {
        summary["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["variant"] == name)
            .unwrap_or_else(|| panic!("no variant {name}"))["test_accuracy"]
            .as_f64()
            .unwrap()
    };
    // The acceptance, on the tutorial's own rows.
    let singles = [acc("single m1"), acc("single m2"), acc("single m3")];
    assert!(
        singles[2] <= 0.65,
        "modality 3 carries no signal: {singles:?}"
    );
    assert!(
        singles[..2].iter().all(|a| (0.70..=0.85).contains(a)),
        "{singles:?}"
    );
    assert!(acc("early fusion") >= 0.93 && acc("cross fusion") >= 0.93);
    assert!(acc("late fusion") >= 0.88, "late {}", acc("late fusion"));
    let best_single = singles.iter().copied().fold(0.0, f64::max);
    for fused in [
        "early fusion",
        "cross fusion",
        "learned late fusion",
        "late fusion",
    ] {
        assert!(
            acc(fused) > best_single,
            "{fused} {} vs best single {best_single}",
            acc(fused)
        );
    }
    assert!(acc("early fusion") >= 0.9, "early {}", acc("early fusion"));
    assert!(dir.join("fusion.md").exists() && dir.join("fusion.svg").exists());
    assert!(std::fs::read_to_string(dir.join("report.html"))
        .unwrap()
        .contains("<svg"));
}

/// The diffusion acceptance: 3 clients, each holding its own frequency band, train a DDPM
/// denoiser with FedAvg. The held-out noise MSE at least halves from round 1 to the last round;
/// of 90 signals generated from pure noise, each band is the nearest for at least 15%; and they
/// lie at most half as far from real signals as an untrained network's samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_ddpm_learns_every_clients_band() {
    use shoal_coordinator::simulate::SimulateOptions;
    let spec = shoal_coordinator::spec::CheckedSpec::from_toml(include_str!(
        "../../examples/diffusion.toml"
    ))
    .unwrap()
    .into_spec();
    let mut o = SimulateOptions::new(spec, Builtin::Signals);
    o.clients = 3;
    let run = crate::util::simulate_finished(o, "").await;
    let outcome = &run.outcome;
    let first = outcome.rounds.first().unwrap();
    let last = outcome.rounds.last().unwrap();
    let (m1, mn) = (first.fed_loss.unwrap(), last.fed_loss.unwrap());
    assert!(mn <= 0.5 * m1, "held-out noise MSE {m1} -> {mn}");
    assert!(
        last.test_loss.is_some() && last.test_accuracy.is_none() && last.fed_accuracy.is_none()
    );
    let dir = std::path::Path::new(&outcome.job.run_dir);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let d = &summary["diffusion"];
    assert!(d["final_alpha_bar"].as_f64().unwrap() <= 0.01);
    let coverage = d["coverage"].as_array().unwrap();
    let bands: Vec<&str> = coverage
        .iter()
        .map(|c| c["band"].as_str().unwrap())
        .collect();
    assert_eq!(
        bands,
        ["band-0", "band-1", "band-2"],
        "the clients' bands only"
    );
    for c in coverage {
        assert!(
            c["nearest"].as_u64().unwrap() >= 14,
            "a band lost its mode: {coverage:?}"
        );
    }
    let (t, u) = (
        d["nearest_distance"].as_f64().unwrap(),
        d["untrained_nearest_distance"].as_f64().unwrap(),
    );
    assert!(t <= 0.5 * u, "nearest-real distance {t} vs untrained {u}");
    let csv = std::fs::read_to_string(dir.join("generated.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 90);
    for f in ["forward.svg", "samples.svg", "loss.svg", "diffusion.md"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    assert!(
        !dir.join("accuracy.svg").exists(),
        "a denoiser has no accuracy"
    );
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("id=\"forward.svg\"><svg") && html.contains("id=\"coverage\""));
}

/// The tutorial's AutoML grid, federated: 36 forest configurations and the default over 5
/// clients, each scored by federated validation accuracy; the test set is used only for the best
/// and the default configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automl_grid_scores_every_trial_on_validation_and_tests_only_the_best() {
    use shoal_coordinator::simulate::SimulateOptions;
    let spec = shoal_coordinator::spec::CheckedSpec::from_toml(include_str!(
        "../../examples/automl-seed.toml"
    ))
    .unwrap()
    .into_spec();
    let mut o = SimulateOptions::new(spec, Builtin::Classification);
    o.clients = 5;
    o.scheme = Partitioner::Iid;
    let run = crate::util::simulate_finished(o, "").await;
    let outcome = &run.outcome;
    assert_eq!(outcome.rounds.len(), 37, "36 grid trials and the default");
    assert!(
        outcome
            .rounds
            .iter()
            .all(|r| r.test_accuracy.is_none() && r.fed_accuracy.is_some()),
        "trials are scored on validation only"
    );
    let dir = std::path::Path::new(&outcome.job.run_dir);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let a = &summary["automl"];
    let trials = a["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 37);
    let best = a["best_validation_accuracy"].as_f64().unwrap();
    let max = trials
        .iter()
        .filter(|t| t["trial"].as_u64() != Some(0))
        .map(|t| t["score"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert_eq!(best, max, "the best trial has the best validation score");
    let best_test = a["best_test_accuracy"].as_f64().unwrap();
    let default_test = a["default_test_accuracy"].as_f64().unwrap();
    assert!(
        best_test > 0.9 && default_test > 0.9,
        "{best_test} {default_test}"
    );
    assert_eq!(summary["final_test_accuracy"].as_f64(), Some(best_test));
    let csv = std::fs::read_to_string(dir.join("trials.csv")).unwrap();
    assert_eq!(csv.lines().count(), 38);
    assert!(dir.join("trials.svg").exists() && dir.join("trials.md").exists());
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("id=\"trials\"") && html.contains("id=\"trials.svg\"><svg"));
}

async fn automl_lr_scores(search: &str, parallel: u32) -> Vec<(u64, f64)> {
    use shoal_coordinator::simulate::SimulateOptions;
    let spec = shoal_coordinator::spec::CheckedSpec::from_toml(&format!(
        "kind = \"automl\"\ndataset = \"digits\"\nrounds = 4\n[clients]\nmin_available_clients = 3\n\
         [automl]\nsearch = \"{search}\"\ntrials = 9\nparallel_trials = {parallel}\n\
         [automl.space]\n\"local.lr\" = {{ low = 0.001, high = 1.0, log = true }}\n\"local.epochs\" = [1, 3]\n"
    ))
    .unwrap().into_spec();
    let mut o = SimulateOptions::new(spec, Builtin::Digits);
    o.clients = 3;
    o.scheme = Partitioner::Iid;
    let run = crate::util::simulate_finished(o, search).await;
    let outcome = &run.outcome;
    let dir = std::path::Path::new(&outcome.job.run_dir);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let mut scores: Vec<(u64, f64)> = summary["automl"]["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["trial"].as_u64().unwrap(), t["score"].as_f64().unwrap()))
        .collect();
    scores.sort_by_key(|s| s.0);
    scores
}

/// Trials run concurrently over the same clients without disturbing each other: a random search
/// of logistic regressions gives the same score per trial with 3 trials at once as one by one.
/// Successive halving runs 9 configurations for 1 round, then the best 3 for all 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_trials_do_not_interfere_and_halving_promotes_the_best() {
    let one = automl_lr_scores("random", 1).await;
    let three = automl_lr_scores("random", 3).await;
    assert_eq!(one.len(), 10);
    assert_eq!(one, three);
    let spread = one.iter().map(|s| s.1).fold(f64::MIN, f64::max)
        - one.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    assert!(
        spread > 0.1,
        "learning rates from 0.001 to 1 should matter: {one:?}"
    );
    let halving = automl_lr_scores("halving", 2).await;
    assert_eq!(halving.len(), 1 + 9 + 3);
    let tpe = automl_lr_scores("tpe", 2).await;
    assert_eq!(tpe.len(), 10);
}

/// A peer that says hello with `dataset` and reads its stream: the notices it was sent, and
/// whether any task came.
async fn misfit_peer(
    url: String,
    name: &str,
    dataset: v1::DatasetInfo,
) -> tokio::task::JoinHandle<(Vec<String>, usize)> {
    let (models, tasks) = crate::util::builtin_kinds();
    let p = RawPeer::with_first(
        &url,
        v1::client_message::Msg::Hello(v1::Hello {
            max_message_bytes: 0,
            max_transfer_bytes: 0,
            protocol_version: shoal_proto::PROTOCOL_VERSION,
            client_name: name.into(),
            token: String::new(),
            datasets: vec![dataset],
            model_kinds: models,
            task_kinds: tasks,
        }),
    )
    .await;
    tokio::spawn(async move {
        let (mut notices, mut tasks) = (Vec::new(), 0);
        // Keep the sending half: dropping it would end the stream.
        let RawPeer { tx: _tx, mut rx } = p;
        while let Ok(Some(m)) = rx.message().await {
            match m.msg {
                Some(coordinator_message::Msg::Notice(n)) => notices.push(n.message),
                Some(coordinator_message::Msg::Task(_)) => tasks += 1,
                Some(coordinator_message::Msg::Reject(r)) => panic!("rejected: {}", r.reason),
                _ => {}
            }
        }
        (notices, tasks)
    })
}

/// S9 #4 and #5: on the README's quick start (a CSV dataset the clients registered, a holdout
/// under --data-dir), a client announcing the dataset with one feature fewer failed the whole
/// job ("clients disagree on dataset"), and one announcing 10,000 class names widened the model
/// to 64 x 10,000. The schema now comes from the holdout (or the spec's `classes`, or the
/// clients' majority): both peers are left out, told why on their streams, and the job equals
/// the clean run, byte for byte on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_can_neither_fail_a_job_nor_widen_its_schema() {
    let data = tempfile::tempdir().unwrap();
    let digits = Builtin::Digits;
    digits
        .holdout()
        .unwrap()
        .to_csv(&data.path().join("holdout.csv"))
        .unwrap();
    let shards = digits.shards(&Partitioner::Iid, 3, 42).unwrap();
    for (i, s) in shards.iter().enumerate() {
        s.to_csv(&data.path().join(format!("client-{i}.csv")))
            .unwrap();
    }
    let holdout = digits.holdout().unwrap();
    let run = |hostile: bool, holdout_line: &'static str| {
        let dir = data.path().to_path_buf();
        let holdout = holdout.clone();
        async move {
            let tc = TestCoordinator::start_with(shoal_coordinator::CoordinatorConfig {
                data_dir: Some(dir.clone()),
                ..Default::default()
            })
            .await;
            let mut stops = Vec::new();
            for i in 0..3 {
                let mut c = shoal_client::Catalog::new();
                c.add_csv("mine", &dir.join(format!("client-{i}.csv")), None, 42)
                    .unwrap();
                stops.push(
                    crate::util::spawn_client(shoal_client::ClientConfig::new(
                        &tc.url,
                        format!("client-{i}"),
                        c,
                    ))
                    .0,
                );
            }
            let info = |features: Vec<String>, classes: Vec<String>| v1::DatasetInfo {
                name: "mine".into(),
                train_examples: 100,
                test_examples: 20,
                feature_names: features,
                class_names: classes,
            };
            let mut peers = Vec::new();
            if hostile {
                let fewer = holdout.feature_names[1..].to_vec();
                peers.push(
                    misfit_peer(
                        tc.url.clone(),
                        "fewer",
                        info(fewer, holdout.class_names.clone()),
                    )
                    .await,
                );
                let mut wide = holdout.class_names.clone();
                wide.extend((0..9_990).map(|i| format!("c{i}")));
                peers.push(
                    misfit_peer(
                        tc.url.clone(),
                        "wide",
                        info(holdout.feature_names.clone(), wide),
                    )
                    .await,
                );
            }
            tc.wait_clients(if hostile { 5 } else { 3 }).await;
            let mut jobs = tc.jobs().await;
            let id = submit(
                &mut jobs,
                &format!("kind = \"train\"\ndataset = \"mine\"\nrounds = 3\n{holdout_line}\n[clients]\nmin_available_clients = 3\nmin_fit_clients = 3\nmin_evaluate_clients = 3\nwait_after_quorum_secs = 0.2\n[evaluation]\n{}",
                    if holdout_line.is_empty() { "holdout = \"holdout.csv\"" } else { "" }),
            )
            .await;
            let (info, rounds) = finish(&mut jobs, &id, 120).await;
            assert_eq!(
                info.status,
                v1::JobStatus::Finished as i32,
                "{}",
                info.error
            );
            for s in stops {
                s.cancel();
            }
            tc.stop().await;
            let mut heard = Vec::new();
            for p in peers {
                heard.push(p.await.unwrap());
            }
            (rounds, heard)
        }
    };
    let figures = |rounds: &[v1::RoundReport]| -> Vec<(u32, Option<f64>, u64, u64)> {
        rounds
            .iter()
            .map(|r| (r.clients, r.fed_accuracy, r.bytes_up, r.bytes_down))
            .collect()
    };
    // Schema from the holdout.
    let (clean, _) = run(false, "").await;
    let (beside, heard) = run(true, "").await;
    assert_eq!(figures(&beside), figures(&clean));
    assert_eq!(
        beside.last().unwrap().test_accuracy,
        clean.last().unwrap().test_accuracy
    );
    let (fewer, wide) = (&heard[0], &heard[1]);
    assert_eq!((fewer.1, wide.1), (0, 0), "a misfit is sent no task");
    assert!(
        fewer
            .0
            .iter()
            .any(|n| n.contains("left out of the job")
                && n.contains("63 features; the job's has 64")),
        "{:?}",
        fewer.0
    );
    assert!(
        wide.0
            .iter()
            .any(|n| n.contains("left out of the job") && n.contains("class \"c0\"")),
        "{:?}",
        wide.0
    );
    assert_eq!(fewer.0.len(), 1, "told once: {:?}", fewer.0);

    // No holdout: the classes the spec declares, the features most clients hold.
    let classes =
        "classes = [\"0\", \"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\"]";
    let (clean, _) = run(false, classes).await;
    let (beside, heard) = run(true, classes).await;
    assert_eq!(figures(&beside), figures(&clean));
    assert!(
        heard.iter().all(|(n, tasks)| n.len() == 1 && *tasks == 0),
        "{heard:?}"
    );
}

/// S10 #10: `summary.json`'s `seconds` was the sum of the round times, not the job's wall time:
/// a job that waited for its clients (or a long end-of-job phase) looked quick. It is now the
/// time from submission to the end, with the rounds' sum beside it (`round_seconds`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_seconds_are_its_wall_time_and_its_rounds_are_counted_apart() {
    let tc = TestCoordinator::start().await;
    let mut jobs = tc.jobs().await;
    let id = submit(
        &mut jobs,
        &digits_job(2, 2, "[evaluation]\ncentralized_baseline = false\n"),
    )
    .await;
    // The job waits for its clients for a second and a half: that is part of its wall time.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let clients: Vec<_> = (0..2)
        .map(|i| start_client(&tc.url, Builtin::Digits, Partitioner::Iid, i, 2))
        .collect();
    let (info, rounds) = finish(&mut jobs, &id, 60).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(&info.run_dir).join("summary.json")).unwrap(),
    )
    .unwrap();
    let (wall, in_rounds) = (
        summary["seconds"].as_f64().unwrap(),
        summary["round_seconds"].as_f64().unwrap(),
    );
    let sum: f64 = rounds.iter().map(|r| r.seconds).sum();
    assert!((in_rounds - sum).abs() < 1e-9, "{in_rounds} vs {sum}");
    assert!(
        wall >= 1.5 && wall > in_rounds,
        "wall {wall} s, rounds {in_rounds} s"
    );
    for (stop, _) in clients {
        stop.cancel();
    }
    tc.stop().await;
}

/// mlp(64, 2048, 10) on digits: 153,610 parameters, about 615 kB in a task or update.
const MLP_2048: &str = "kind = \"train\"\ndataset = \"digits\"\nrounds = 2\nseed = 7\n[model]\nkind = \"mlp\"\nhidden = [2048]\n[clients]\nmin_available_clients = 2\nmin_fit_clients = 2\nwait_for_clients_secs = 2\n";

/// Runs `MLP_2048` on a coordinator with `config` and two digits clients set up by `client`;
/// returns the job's end and rounds.
async fn run_mlp_2048(
    config: shoal_coordinator::CoordinatorConfig,
    client: impl Fn(&mut shoal_client::ClientConfig),
) -> (v1::JobInfo, Vec<v1::RoundReport>) {
    use crate::util::spawn_client;
    use shoal_client::{Catalog, ClientConfig};
    let tc = TestCoordinator::start_with(config).await;
    let mut jobs = tc.jobs().await;
    let mut stops = Vec::new();
    for i in 0..2 {
        let mut catalog = Catalog::new();
        catalog
            .add_builtin(Builtin::Digits, &Partitioner::Iid, i, 2, 42)
            .unwrap();
        let mut config = ClientConfig::new(&tc.url, format!("client-{i}"), catalog);
        client(&mut config);
        stops.push(spawn_client(config).0);
    }
    let id = submit(&mut jobs, MLP_2048).await;
    let out = finish(&mut jobs, &id, 120).await;
    for s in stops {
        s.cancel();
    }
    tc.stop().await;
    out
}

/// What two seeded runs of one job must share to have trained the same models.
fn figures(rounds: &[v1::RoundReport]) -> Vec<(u64, u64, Option<u64>)> {
    rounds
        .iter()
        .map(|r| {
            (
                r.train_loss.to_bits(),
                r.fed_loss.unwrap_or(f64::NAN).to_bits(),
                r.test_accuracy.map(f64::to_bits),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_over_the_message_limit_travels_in_chunks_and_trains_the_same() {
    use shoal_coordinator::CoordinatorConfig;
    // Whole messages: 615 kB is under the 1 MiB chunk.
    let (info, whole) = run_mlp_2048(CoordinatorConfig::default(), |_| {}).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert_eq!(whole.len(), 2);
    // 64 KiB chunks both ways: every task and update is cut into about ten.
    let (info, chunked) = run_mlp_2048(
        CoordinatorConfig {
            chunk_bytes: 64 * 1024,
            ..Default::default()
        },
        |c| c.chunk_bytes = 64 * 1024,
    )
    .await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert_eq!(
        figures(&chunked),
        figures(&whole),
        "chunking changed what was trained"
    );
    for (c, w) in chunked.iter().zip(&whole) {
        // The same bytes travel, give or take a few bytes of field keys per update.
        assert!(
            c.bytes_up.abs_diff(w.bytes_up) < 100,
            "{} vs {}",
            c.bytes_up,
            w.bytes_up
        );
        assert!(c.bytes_down.abs_diff(w.bytes_down) < 100);
    }
    // A coordinator that takes 512 KiB messages and clients that take 600 kB: the model goes
    // both ways in chunks under each side's limit.
    let (info, limited) = run_mlp_2048(
        CoordinatorConfig {
            max_message_bytes: 512 * 1024,
            ..Default::default()
        },
        |c| c.max_message_bytes = 600 * 1000,
    )
    .await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert_eq!(figures(&limited), figures(&whole));
}

/// Size limits are checked from the model's size before any task goes out, and each error names
/// the limit and the flag that raises it: a model over the coordinator's transfer limit fails the
/// job at once; a client that cannot take it is left out, told why, and the job's error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_over_a_transfer_limit_is_refused_naming_the_flag() {
    use shoal_coordinator::CoordinatorConfig;
    // Over the coordinator's own limit: the job fails at once.
    let (info, rounds) = run_mlp_2048(
        CoordinatorConfig {
            max_message_bytes: 512 * 1024,
            max_transfer_bytes: 600 * 1000,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    assert_eq!(info.status, v1::JobStatus::Failed as i32);
    assert!(rounds.is_empty());
    assert!(
        info.error.contains(
            "over the coordinator's transfer limit of 600000 bytes (--max-transfer-bytes, now 600000; a model over the message limit, --max-message-bytes 524288, travels in chunks up to it)"
        ),
        "{}",
        info.error
    );
    // A client that takes no chunks and 600 kB messages is left out, told the flag.
    let (info, _) = run_mlp_2048(CoordinatorConfig::default(), |c| {
        if c.name == "client-1" {
            c.max_message_bytes = 600 * 1000;
            c.max_transfer_bytes = 0;
        }
    })
    .await;
    assert_eq!(info.status, v1::JobStatus::Failed as i32);
    assert!(
        info.error.contains("saw 1 after waiting 2s; 1 more do not fit the job (client-1: it accepts messages of up to 600000 bytes and no chunked transfers")
            && info.error.contains("start the client with --max-message-bytes"),
        "{}",
        info.error
    );
    // One that takes chunks of up to 600 kB in all is told the other flag.
    let (info, _) = run_mlp_2048(CoordinatorConfig::default(), |c| {
        if c.name == "client-1" {
            c.max_message_bytes = 600 * 1000;
            c.max_transfer_bytes = 600 * 1000;
        }
    })
    .await;
    assert_eq!(info.status, v1::JobStatus::Failed as i32);
    assert!(
        info.error
            .contains("(client-1: it accepts chunked transfers of up to 600000 bytes")
            && info
                .error
                .contains("start the client with --max-transfer-bytes"),
        "{}",
        info.error
    );
}

/// `simulate` runs its clients over a few shared HTTP/2 connections (64 streams each), so
/// thousands of clients fit in one process's file descriptors; 150 clients use three
/// connections, and every one of them trains and evaluates every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_runs_many_clients_over_a_few_shared_connections() {
    use shoal_coordinator::simulate::SimulateOptions;
    let toml = "kind = \"train\"\ndataset = \"seed-fl\"\nrounds = 2\n[model]\nkind = \"logreg\"\n\
                [evaluation]\ncentralized_baseline = false\n";
    let spec = shoal_coordinator::spec::CheckedSpec::from_toml(toml)
        .unwrap()
        .into_spec();
    let mut o = SimulateOptions::new(spec, Builtin::SeedFl);
    o.clients = 150;
    let run = crate::util::simulate_finished(o, toml).await;
    assert_eq!(run.outcome.rounds.len(), 2);
    for r in &run.outcome.rounds {
        assert_eq!(r.clients, 150, "{r:?}");
    }
}

/// Digits, MLP(64), 4 Dirichlet(0.5) clients, 6 rounds, updates sent as `compression` asks.
async fn digits_compressed(compression: &str) -> Vec<v1::RoundReport> {
    use shoal_coordinator::simulate::SimulateOptions;
    let toml = format!(
        "kind = \"train\"\ndataset = \"digits\"\nrounds = 6\nseed = 3\n[model]\nkind = \"mlp\"\n\
         hidden = [64]\n[updates]\ncompression = \"{compression}\"\ntopk_fraction = 0.1\n\
         [evaluation]\ncentralized_baseline = false\n"
    );
    let spec = shoal_coordinator::spec::CheckedSpec::from_toml(&toml)
        .unwrap()
        .into_spec();
    let mut o = SimulateOptions::new(spec, Builtin::Digits);
    o.clients = 4;
    o.scheme = "dirichlet:0.5".parse().unwrap();
    crate::util::simulate_finished(o, &toml)
        .await
        .outcome
        .rounds
}

/// `updates.compression`: clients send the change they made, encoded, and the coordinator adds
/// it back to the model it sent. Fewer bytes go up by each codec's factor, the model still
/// trains, and int8's stochastic rounding draws from the task seed so runs reproduce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_updates_send_fewer_bytes_and_still_train() {
    let up = |r: &[v1::RoundReport]| r.iter().map(|r| r.bytes_up).sum::<u64>() as f64;
    let acc = |r: &[v1::RoundReport]| r.last().unwrap().test_accuracy.unwrap();
    let plain = digits_compressed("none").await;
    assert!(acc(&plain) > 0.8, "{}", acc(&plain));
    for (name, fewer, within) in [("f16", 1.9, 0.01), ("bf16", 1.9, 0.02), ("int8", 3.5, 0.03)] {
        let run = digits_compressed(name).await;
        let ratio = up(&plain) / up(&run);
        assert!(ratio >= fewer, "{name}: {ratio:.2}x fewer bytes up");
        assert!(
            acc(&run) >= acc(&plain) - within,
            "{name}: accuracy {} against {}",
            acc(&run),
            acc(&plain)
        );
        // Bytes down are the model, uncompressed (tasks name the compression: a few bytes).
        assert!(run[0].bytes_down.abs_diff(plain[0].bytes_down) < 100);
        eprintln!("{name}: {ratio:.2}x fewer bytes up, accuracy {}", acc(&run));
    }
    // Top-k (10% of each tensor, 8 bytes a kept value) with error feedback.
    let topk = digits_compressed("topk").await;
    let ratio = up(&plain) / up(&topk);
    eprintln!("topk: {ratio:.2}x fewer bytes up, accuracy {}", acc(&topk));
    assert!(ratio >= 4.0, "topk: {ratio:.2}x fewer bytes up");
    assert!(acc(&topk) > 0.7, "topk: accuracy {}", acc(&topk));
    // Reproducible: the same seed gives the same int8 draws, hence the same models.
    assert_eq!(
        figures(&digits_compressed("int8").await),
        figures(&digits_compressed("int8").await)
    );
}
