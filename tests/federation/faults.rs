//! Faults: clients that leave, stall or get cut off, coordinators that restart, quorums that cannot be met, stragglers.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_round_does_not_hang_it() {
    let tc = TestCoordinator::start().await;
    let clients: Vec<_> = (0..3)
        .map(|i| start_client(&tc.url, Builtin::Digits, Partitioner::Iid, i, 3))
        .collect();
    let mut quitter = RawPeer::connect(
        &tc.url,
        "quitter",
        shoal_proto::PROTOCOL_VERSION,
        Builtin::Digits,
    )
    .await;
    assert!(matches!(
        quitter.next().await,
        Some(coordinator_message::Msg::Welcome(_))
    ));
    tc.wait_clients(4).await;
    let mut jobs = tc.jobs().await;
    // A long grace after quorum: if the departure went unnoticed the round would sit out 60 s and
    // the 30 s bound below would fail the test.
    let id = submit(
        &mut jobs,
        &digits_job(
            2,
            3,
            "wait_after_quorum_secs = 60\nround_timeout_secs = 120\n",
        ),
    )
    .await;
    // The quitter receives its Fit task, then vanishes mid-round.
    match quitter.next().await {
        Some(coordinator_message::Msg::Task(t)) => {
            assert!(matches!(t.kind, Some(task::Kind::Fit(_))))
        }
        other => panic!("expected a task, got {other:?}"),
    }
    drop(quitter);
    let (info, rounds) = finish(&mut jobs, &id, 30).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert_eq!((rounds[0].clients_selected, rounds[0].clients), (4, 3));
    assert_eq!((rounds[1].clients_selected, rounds[1].clients), (3, 3));
    for (stop, _) in clients {
        stop.cancel();
    }
    tc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_wait_for_a_late_coordinator_and_reconnect_after_a_restart() {
    // Reserve a port, release it, and start the client first: nothing listens yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}");
    let (stop, handle) = start_client(&url, Builtin::Iris, Partitioner::Iid, 0, 2);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let tc = TestCoordinator::start_on(&addr.to_string(), Default::default()).await;
    tc.wait_clients(1).await;
    tc.stop().await;

    // A new coordinator on the same address: the client finds it again by itself.
    let tc = TestCoordinator::start_on(&addr.to_string(), Default::default()).await;
    tc.wait_clients(1).await;
    stop.cancel();
    handle.await.unwrap().unwrap();
    tc.stop().await;
}

/// A network cut (docker network disconnect, a pulled cable): the cut-off client's rounds end
/// without it at quorum, and once the link is back it connects again, replacing its silent old
/// session at once rather than waiting minutes for TCP or keep-alive to declare it dead, and
/// takes part in the rounds that follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_by_the_network_takes_part_again_once_it_is_back() {
    use std::time::Duration;
    let tc = TestCoordinator::start_with(shoal_coordinator::CoordinatorConfig {
        heartbeat_interval: Duration::from_millis(500),
        print_rounds: false,
        ..Default::default()
    })
    .await;
    let proxy = crate::util::CutProxy::start(&tc.url).await;
    let mut clients: Vec<_> = (0..2)
        .map(|i| start_client(&tc.url, Builtin::Iris, Partitioner::Iid, i, 3))
        .collect();
    let mut catalog = shoal_client::Catalog::new();
    catalog
        .add_builtin(Builtin::Iris, &Partitioner::Iid, 2, 3, 42)
        .unwrap();
    let mut config = shoal_client::ClientConfig::new(&proxy.url, "client-2", catalog);
    config.initial_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(300);
    clients.push(crate::util::spawn_client(config));
    tc.wait_clients(3).await;

    let mut jobs = tc.jobs().await;
    let id = submit(
        &mut jobs,
        // Rounds with every client take milliseconds, faster than watch events arrive under load:
        // the cut may land several rounds after round 2 (in CI once at round 9, leaving too few
        // rounds after the restore), so the job has rounds to spare.
        "kind = \"train\"\ndataset = \"iris\"\nrounds = 30\n[clients]\nmin_available_clients = 2\n\
         min_fit_clients = 2\nmin_evaluate_clients = 2\nwait_after_quorum_secs = 1\nround_timeout_secs = 10\n",
    )
    .await;
    let mut watch = jobs
        .watch(v1::WatchRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    // Cut after round 2; restore once two rounds have run without client-2.
    let (mut rounds, mut without, mut restored_after) = (Vec::new(), 0, None);
    let info = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(ev) = watch.message().await.unwrap() {
            match ev.event {
                Some(v1::watch_event::Event::Round(r)) => {
                    if r.round == 2 {
                        proxy.cut();
                    } else if r.round > 2 && restored_after.is_none() && r.clients == 2 {
                        without += 1;
                        if without == 2 {
                            proxy.restore();
                            restored_after = Some(r.round);
                        }
                    }
                    rounds.push(r);
                }
                Some(v1::watch_event::Event::Finished(j)) => return j,
                None => {}
            }
        }
        panic!("watch ended without a final event");
    })
    .await
    .expect("the job did not end within 120 s");
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    let counts: Vec<u32> = rounds.iter().map(|r| r.clients).collect();
    let restored_after = restored_after
        .unwrap_or_else(|| panic!("fewer than two rounds ran without client-2: {counts:?}"));
    assert!(
        restored_after < 25,
        "the cut lasted too long to leave 5 rounds to come back in: {counts:?}"
    );
    assert_eq!(
        counts.last(),
        Some(&3),
        "client-2 did not take part again after the link came back (clients per round: {counts:?})"
    );
    for (stop, handle) in clients {
        stop.cancel();
        handle.await.unwrap().unwrap();
    }
    // The old session's connection is still stalled in the proxy; the coordinator's shutdown
    // must not wait for it (keep-alive would take 30 s), so it is left open here.
    let started = std::time::Instant::now();
    tc.stop().await;
    drop(proxy);
    eprintln!(
        "shutdown with a dead connection open took {:?}",
        started.elapsed()
    );
}

/// A job whose quorum can never be met fails, with how many clients it needed and saw, once its
/// configured wait is over: it never hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_that_cannot_be_met_fails_with_the_reason_after_the_wait() {
    let tc = TestCoordinator::start().await;
    let client = start_client(&tc.url, Builtin::Iris, Partitioner::Iid, 0, 3);
    tc.wait_clients(1).await;
    let mut jobs = tc.jobs().await;
    let started = std::time::Instant::now();
    let id = submit(
        &mut jobs,
        "kind = \"train\"\ndataset = \"iris\"\nrounds = 3\n[clients]\nmin_fit_clients = 3\n\
         min_available_clients = 3\nwait_for_clients_secs = 1.5\n",
    )
    .await;
    let (info, rounds) = finish(&mut jobs, &id, 30).await;
    assert_eq!(info.status, v1::JobStatus::Failed as i32);
    assert!(rounds.is_empty());
    assert!(
        info.error.contains("needed 3") && info.error.contains("saw 1"),
        "{}",
        info.error
    );
    // It waited its 1.5 s before giving up (and `finish` bounds the whole job at 30 s).
    assert!(started.elapsed() >= std::time::Duration::from_millis(1400));
    client.0.cancel();
    tc.stop().await;
}

/// Over-selection: a round that needs 2 updates asks all 4 clients and closes as soon as 2 have
/// arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_selection_asks_more_clients_and_keeps_the_first_updates() {
    let tc = TestCoordinator::start().await;
    let clients: Vec<_> = (0..4)
        .map(|i| start_client(&tc.url, Builtin::Iris, Partitioner::Iid, i, 4))
        .collect();
    tc.wait_clients(4).await;
    let mut jobs = tc.jobs().await;
    let id = submit(
        &mut jobs,
        "kind = \"train\"\ndataset = \"iris\"\nrounds = 3\n[clients]\nfraction_fit = 0.5\nmin_fit_clients = 2\n\
         min_available_clients = 4\nover_selection = 2.0\n",
    )
    .await;
    let (info, rounds) = finish(&mut jobs, &id, 60).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert!(
        rounds
            .iter()
            .all(|r| r.clients_selected == 4 && r.clients == 2),
        "{rounds:?}"
    );
    for (stop, _) in clients {
        stop.cancel();
    }
    tc.stop().await;
}

/// A peer holding digits that answers every task plausibly (its update is the global model
/// unchanged); with `drop_at`, it hangs up when that round's Fit task arrives (once) and says
/// hello again half a second later.
async fn echo_peer(url: String, drop_at: Option<u32>) {
    let mut dropped = false;
    loop {
        let mut p =
            RawPeer::connect(&url, "echo", shoal_proto::PROTOCOL_VERSION, Builtin::Digits).await;
        while let Some(msg) = p.next().await {
            let coordinator_message::Msg::Task(t) = msg else {
                continue;
            };
            let outcome = match t.kind {
                Some(task::Kind::Fit(_)) if !dropped && Some(t.round) == drop_at => {
                    dropped = true;
                    break;
                }
                Some(task::Kind::Fit(_)) => task_result::Outcome::Fit(v1::FitResult {
                    parameters: t.parameters.clone(),
                    num_examples: 100,
                    train_loss: 1.0,
                    control_delta: None,
                    trees: None,
                    delta: false,
                }),
                _ => task_result::Outcome::Evaluate(v1::EvaluateResult {
                    num_examples: 20,
                    loss: 1.0,
                    accuracy: 0.5,
                    classes_present: 10,
                    personalized_accuracy: None,
                }),
            };
            p.send_result(v1::TaskResult {
                task_id: t.task_id.clone(),
                job_id: t.job_id.clone(),
                round: t.round,
                outcome: Some(outcome),
            })
            .await;
        }
        drop(p);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// S10 #1: when required clients left mid-round (all ten killed 50 ms into a round and back a
/// second later), the round failed for good ("0 of the 5 required clients ... 10 left"), and a
/// failed job is never resumed. Now the round waits for clients (`wait_for_clients_secs`) and
/// runs again from the same seeds: every round is recorded once, and the job's figures equal
/// those of the undisturbed run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_whose_clients_left_runs_again_once_they_are_back() {
    let run = |drop_at: Option<u32>| async move {
        let tc = TestCoordinator::start().await;
        let clients: Vec<_> = (0..2)
            .map(|i| start_client(&tc.url, Builtin::Digits, Partitioner::Iid, i, 2))
            .collect();
        let peer = tokio::spawn(echo_peer(tc.url.clone(), drop_at));
        tc.wait_clients(3).await;
        let mut jobs = tc.jobs().await;
        let id = submit(
            &mut jobs,
            "kind = \"train\"\ndataset = \"digits\"\nrounds = 5\n\
             [clients]\nmin_fit_clients = 3\nmin_available_clients = 3\nmin_evaluate_clients = 3\n\
             wait_for_clients_secs = 30\n",
        )
        .await;
        let (info, rounds) = finish(&mut jobs, &id, 60).await;
        peer.abort();
        for (stop, _) in clients {
            stop.cancel();
        }
        tc.stop().await;
        assert_eq!(
            info.status,
            v1::JobStatus::Finished as i32,
            "{}",
            info.error
        );
        rounds
    };
    let calm = run(None).await;
    let disturbed = run(Some(3)).await;
    type Figures = Vec<(u32, u32, f64, Option<f64>, Option<f64>)>;
    let figures = |r: &[v1::RoundReport]| -> Figures {
        r.iter()
            .map(|r| {
                (
                    r.round,
                    r.clients,
                    r.train_loss,
                    r.fed_accuracy,
                    r.test_accuracy,
                )
            })
            .collect()
    };
    assert_eq!(
        disturbed.iter().map(|r| r.round).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(figures(&disturbed), figures(&calm));
}

/// S10 #3: with the state store full ("database or disk is full") a job died, could not record
/// its end, and stayed `running` forever, even after space was freed. A full store now pauses the
/// job (one warning, a write tried again every 2 s); once there is room it goes on, and it finishes
/// with every round recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_store_pauses_the_job_until_there_is_room() {
    let tc = TestCoordinator::start().await;
    let clients: Vec<_> = (0..2)
        .map(|i| start_client(&tc.url, Builtin::Digits, Partitioner::Iid, i, 2))
        .collect();
    tc.wait_clients(2).await;
    let store = tc.coord.store();
    // No page more than now: the job's row fits in the pages there are, its first checkpoint not
    // (an MLP's: 19,210 parameters, 77 kB in binary; a logreg's 2.6 kB would fit in free pages).
    store
        .limit_pages(Some(store.page_count().unwrap()))
        .unwrap();
    let mut jobs = tc.jobs().await;
    let id = submit(
        &mut jobs,
        &digits_job(4, 2, "[model]\nkind = \"mlp\"\nhidden = [256]\n"),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let info = jobs
        .get(v1::GetRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.status, v1::JobStatus::Running as i32, "{info:?}");
    assert_eq!(info.rounds_done, 0, "{info:?}");
    store.limit_pages(None).unwrap();
    let (info, rounds) = finish(&mut jobs, &id, 60).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert_eq!(
        rounds.iter().map(|r| r.round).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    for (stop, _) in clients {
        stop.cancel();
    }
    tc.stop().await;
}

/// S10 #2: with 20 or 40 identical jobs submitted at once to one coordinator with 10 clients,
/// jobs failed ("7 left") or ran rounds with 5 clients and ended with other models: a client's
/// task queue (16 deep) overflowed in the burst and a full queue was taken for a dead client.
/// Here the 40 jobs wait for their clients, so that all of them send round 1's tasks at the same
/// moment. A busy client now takes its tasks in turn; every job ends with the model of the job
/// run alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_jobs_end_with_the_model_of_the_job_run_alone() {
    const CLIENTS: usize = 10;
    // Every client in every round: a round that ran without one would end with another model.
    let spec = format!(
        "kind = \"train\"\ndataset = \"digits\"\nrounds = 3\n\
         [clients]\nmin_fit_clients = {CLIENTS}\nmin_evaluate_clients = {CLIENTS}\n\
         min_available_clients = {CLIENTS}\nwait_for_clients_secs = 60\n\
         [evaluation]\ncentralized_baseline = false\n"
    );
    // The final tensors, as the run folder keeps them.
    let model = |info: &v1::JobInfo| -> Vec<u8> {
        let bytes =
            std::fs::read(std::path::Path::new(&info.run_dir).join("model.safetensors")).unwrap();
        assert!(bytes.len() > 1000, "model.safetensors holds no model");
        bytes
    };
    let start_clients = |url: &str| -> Vec<_> {
        (0..CLIENTS)
            .map(|i| start_client(url, Builtin::Digits, Partitioner::Iid, i, CLIENTS))
            .collect()
    };
    let stop_clients = |clients: Vec<(tokio_util::sync::CancellationToken, _)>| {
        for (stop, _) in clients {
            stop.cancel();
        }
    };

    let tc = TestCoordinator::start().await;
    let clients = start_clients(&tc.url);
    tc.wait_clients(CLIENTS).await;
    let mut jobs = tc.jobs().await;
    let alone = submit(&mut jobs, &spec).await;
    let (info, alone_rounds) = finish(&mut jobs, &alone, 120).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    let want = model(&info);
    stop_clients(clients);
    tc.stop().await;

    let tc = TestCoordinator::start().await;
    let mut jobs = tc.jobs().await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(submit(&mut jobs, &spec).await);
    }
    let clients = start_clients(&tc.url);
    for id in &ids {
        let (info, rounds) = finish(&mut jobs, id, 600).await;
        assert_eq!(
            info.status,
            v1::JobStatus::Finished as i32,
            "job {id}: {}",
            info.error
        );
        assert!(
            rounds.iter().all(|r| r.clients as usize == CLIENTS),
            "job {id} ran rounds without every client: {:?}",
            rounds.iter().map(|r| r.clients).collect::<Vec<_>>()
        );
        assert_eq!(rounds.len(), alone_rounds.len());
        assert!(model(&info) == want, "job {id} ended with another model");
    }
    stop_clients(clients);
    tc.stop().await;
}
