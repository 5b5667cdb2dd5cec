//! Coordinator and clients in one process over loopback gRPC.

use shoal_proto::v1::{self, coordinator_message, task, task_result};
use shoal_shared::data::builtin::Builtin;
use shoal_shared::data::partition::Partitioner;

use crate::util::{finish, start_client, submit, RawPeer, TestCoordinator};

/// A small digits job; `extra` is appended (sections).
fn digits_job(rounds: u32, min_available: u32, extra: &str) -> String {
    format!(
        "kind = \"train\"\ndataset = \"digits\"\nrounds = {rounds}\n\
         [clients]\nmin_available_clients = {min_available}\nmin_fit_clients = 2\nmin_evaluate_clients = 2\n\
         wait_for_clients_secs = 20\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_accuracy_rises_over_five_rounds() {
    let tc = TestCoordinator::start().await;
    let clients: Vec<_> = (0..3)
        .map(|i| start_client(&tc.url, Builtin::Digits, Partitioner::Iid, i, 3))
        .collect();
    let mut jobs = tc.jobs().await;
    // One local epoch with a small step, so progress is spread over the rounds.
    let id = submit(
        &mut jobs,
        &digits_job(5, 3, "[local]\nepochs = 1\nlr = 0.05\nbatch_size = 32\n"),
    )
    .await;
    let (info, rounds) = finish(&mut jobs, &id, 60).await;
    assert_eq!(info.status, v1::JobStatus::Finished as i32, "{}", info.error);
    assert_eq!(rounds.len(), 5);
    let acc: Vec<f64> = rounds.iter().map(|r| r.test_accuracy.unwrap()).collect();
    assert!(acc[4] > acc[0], "test accuracy per round: {acc:?}");
    assert!(acc[4] > 0.85, "final test accuracy {}", acc[4]);
    assert!(rounds.iter().all(|r| r.clients == 3 && r.fed_accuracy.is_some()));
    assert!(rounds.iter().all(|r| r.bytes_up > 0 && r.bytes_down > 0));

    // The run folder holds the documented files.
    let dir = std::path::Path::new(&info.run_dir);
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(
        csv.lines().next().unwrap(),
        "round,clients,train_loss,fed_loss,fed_accuracy,test_accuracy,bytes_up,bytes_down,seconds"
    );
    assert_eq!(csv.lines().count(), 6);
    for f in ["metrics.jsonl", "spec.toml", "model.json", "summary.json"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    for (stop, handle) in clients {
        stop.cancel();
        handle.await.unwrap().unwrap();
    }
    tc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_round_does_not_hang_it() {
    let tc = TestCoordinator::start().await;
    let clients: Vec<_> = (0..3)
        .map(|i| start_client(&tc.url, Builtin::Digits, Partitioner::Iid, i, 3))
        .collect();
    let mut quitter = RawPeer::connect(&tc.url, "quitter", shoal_proto::PROTOCOL_VERSION, Builtin::Digits).await;
    assert!(matches!(quitter.next().await, Some(coordinator_message::Msg::Welcome(_))));
    tc.wait_clients(4).await;
    let mut jobs = tc.jobs().await;
    // A long grace after quorum: if the departure went unnoticed the round would sit out 60 s and
    // the 30 s bound below would fail the test.
    let id = submit(
        &mut jobs,
        &digits_job(2, 3, "wait_after_quorum_secs = 60\nround_timeout_secs = 120\n"),
    )
    .await;
    // The quitter receives its Fit task, then vanishes mid-round.
    match quitter.next().await {
        Some(coordinator_message::Msg::Task(t)) => assert!(matches!(t.kind, Some(task::Kind::Fit(_)))),
        other => panic!("expected a task, got {other:?}"),
    }
    drop(quitter);
    let (info, rounds) = finish(&mut jobs, &id, 30).await;
    assert_eq!(info.status, v1::JobStatus::Finished as i32, "{}", info.error);
    assert_eq!((rounds[0].clients_selected, rounds[0].clients), (4, 3));
    assert_eq!((rounds[1].clients_selected, rounds[1].clients), (3, 3));
    for (stop, _) in clients {
        stop.cancel();
    }
    tc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_protocol_version_is_rejected_with_both_versions() {
    let tc = TestCoordinator::start().await;
    let mut peer = RawPeer::connect(&tc.url, "old", 999, Builtin::Digits).await;
    match peer.next().await {
        Some(coordinator_message::Msg::Reject(r)) => {
            assert!(r.reason.contains("999"), "{}", r.reason);
            assert!(
                r.reason.contains(&shoal_proto::PROTOCOL_VERSION.to_string()),
                "{}",
                r.reason
            );
            assert_eq!(r.coordinator_protocol_version, shoal_proto::PROTOCOL_VERSION);
        }
        other => panic!("expected Reject, got {other:?}"),
    }
    assert!(peer.next().await.is_none(), "the stream ends after Reject");
    assert!(tc.coord.registry().is_empty(), "a rejected client is not registered");
    tc.stop().await;
}

/// A peer that answers every Fit task with a corrupted update and refuses to evaluate.
async fn corrupt_peer(url: &str, name: &str, corrupt: fn(&mut v1::Tensor)) -> tokio::task::JoinHandle<()> {
    let mut peer = RawPeer::connect(url, name, shoal_proto::PROTOCOL_VERSION, Builtin::Digits).await;
    assert!(matches!(peer.next().await, Some(coordinator_message::Msg::Welcome(_))));
    tokio::spawn(async move {
        while let Some(msg) = peer.next().await {
            let coordinator_message::Msg::Task(t) = msg else { continue };
            let outcome = match t.kind {
                Some(task::Kind::Fit(_)) => {
                    let mut params = t.parameters.clone().unwrap();
                    corrupt(&mut params.tensors[0]);
                    task_result::Outcome::Fit(v1::FitResult {
                        parameters: Some(params),
                        num_examples: 100,
                        train_loss: 0.5,
                    })
                }
                _ => task_result::Outcome::Error("this peer does not evaluate".into()),
            };
            peer.send_result(v1::TaskResult {
                task_id: t.task_id,
                job_id: t.job_id,
                round: t.round,
                outcome: Some(outcome),
            })
            .await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_with_wrong_shape_or_nan_are_rejected_and_the_round_completes() {
    let tc = TestCoordinator::start().await;
    let clients: Vec<_> = (0..2)
        .map(|i| start_client(&tc.url, Builtin::Digits, Partitioner::Iid, i, 2))
        .collect();
    let shape = corrupt_peer(&tc.url, "bad-shape", |t| {
        t.shape[0] += 1;
        t.data.extend_from_slice(&[0u8; 40]);
    })
    .await;
    let nan = corrupt_peer(&tc.url, "nan", |t| {
        t.data[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    })
    .await;
    tc.wait_clients(4).await;
    let mut jobs = tc.jobs().await;
    let id = submit(&mut jobs, &digits_job(3, 4, "wait_after_quorum_secs = 10\n")).await;
    let (info, rounds) = finish(&mut jobs, &id, 60).await;
    assert_eq!(info.status, v1::JobStatus::Finished as i32, "{}", info.error);
    for r in &rounds {
        assert_eq!((r.clients_selected, r.clients), (4, 2), "round {}", r.round);
        // Two bad updates, two refused evaluations.
        assert_eq!(r.rejected, 4, "round {}", r.round);
    }
    let last = rounds.last().unwrap();
    assert!(last.test_accuracy.unwrap() > 0.8, "the global model stayed healthy: {last:?}");
    for (stop, _) in clients {
        stop.cancel();
    }
    shape.abort();
    nan.abort();
    tc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_api_reports_unknown_jobs_and_bad_specs() {
    let tc = TestCoordinator::start().await;
    let mut jobs = tc.jobs().await;
    let err = jobs
        .get(v1::GetRequest { job_id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = jobs
        .submit(v1::SubmitRequest {
            spec: "kind = \"train\"\nrounds = 0\n".into(),
            format: "toml".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("rounds"), "{}", err.message());

    // A queued job waiting for clients can be cancelled, and Watch then ends.
    let id = submit(&mut jobs, &digits_job(3, 2, "")).await;
    jobs.cancel(v1::CancelRequest { job_id: id.clone() }).await.unwrap();
    let (info, rounds) = finish(&mut jobs, &id, 20).await;
    assert_eq!(info.status, v1::JobStatus::Cancelled as i32);
    assert!(rounds.is_empty());
    let list = jobs.list(v1::ListRequest {}).await.unwrap().into_inner();
    assert_eq!(list.jobs.len(), 1);
    tc.stop().await;
}
