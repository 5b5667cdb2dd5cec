//! The protocol: handshake, versions, names, heartbeats, the Jobs API.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_protocol_version_is_rejected_with_both_versions() {
    let tc = TestCoordinator::start().await;
    // Version 1 sent tree models as JSON blobs; a peer still speaking it is told, not misread.
    for theirs in [1, 999] {
        let mut peer = RawPeer::connect(&tc.url, "old", theirs, Builtin::Digits).await;
        match peer.next().await {
            Some(coordinator_message::Msg::Reject(r)) => {
                assert!(
                    r.reason.contains(&format!("client speaks {theirs}")),
                    "{}",
                    r.reason
                );
                assert!(
                    r.reason
                        .contains(&shoal_proto::PROTOCOL_VERSION.to_string()),
                    "{}",
                    r.reason
                );
                assert_eq!(
                    r.coordinator_protocol_version,
                    shoal_proto::PROTOCOL_VERSION
                );
            }
            other => panic!("expected Reject, got {other:?}"),
        }
        assert!(peer.next().await.is_none(), "the stream ends after Reject");
    }
    assert!(
        tc.coord.registry().is_empty(),
        "a rejected client is not registered"
    );
    tc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_with_a_taken_name_is_told_to_retry_and_bad_hellos_are_rejected() {
    let tc = TestCoordinator::start().await;
    let mut first = RawPeer::connect(
        &tc.url,
        "twin",
        shoal_proto::PROTOCOL_VERSION,
        Builtin::Iris,
    )
    .await;
    assert!(matches!(
        first.next().await,
        Some(coordinator_message::Msg::Welcome(_))
    ));
    let hello = |name: &str, classes: usize| {
        v1::client_message::Msg::Hello(v1::Hello {
            max_message_bytes: 0,
            max_transfer_bytes: 0,
            protocol_version: shoal_proto::PROTOCOL_VERSION,
            client_name: name.into(),
            token: String::new(),
            datasets: vec![v1::DatasetInfo {
                name: "iris".into(),
                train_examples: 10,
                test_examples: 2,
                feature_names: vec!["a".into(); 4],
                class_names: (0..classes).map(|i| i.to_string()).collect(),
            }],
            model_kinds: crate::util::builtin_kinds().0,
            task_kinds: crate::util::builtin_kinds().1,
        })
    };
    let err = match RawPeer::try_with_first(&tc.url, hello("twin", 3)).await {
        Ok(_) => panic!("a second `twin` was let in"),
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains("twin"), "{}", err.message());
    // A Hello that would size the model at will is rejected with the reason.
    let mut greedy = RawPeer::with_first(&tc.url, hello("greedy", 1_000_000)).await;
    match greedy.next().await {
        Some(coordinator_message::Msg::Reject(r)) => {
            assert!(r.reason.contains("classes"), "{}", r.reason)
        }
        other => panic!("expected Reject, got {other:?}"),
    }
    // A first message that is not a Hello is rejected too.
    let mut rude = RawPeer::with_first(
        &tc.url,
        v1::client_message::Msg::Heartbeat(v1::Heartbeat { unix_ms: 1 }),
    )
    .await;
    assert!(matches!(
        rude.next().await,
        Some(coordinator_message::Msg::Reject(_))
    ));
    // Once the first `twin` leaves, the name is free again.
    drop(first);
    tc.wait_clients(0).await;
    let mut again = RawPeer::with_first(&tc.url, hello("twin", 3)).await;
    assert!(matches!(
        again.next().await,
        Some(coordinator_message::Msg::Welcome(_))
    ));
    tc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_gets_heartbeats_and_is_dropped() {
    let tc = TestCoordinator::start_with(shoal_coordinator::CoordinatorConfig {
        heartbeat_interval: std::time::Duration::from_millis(100),
        heartbeat_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut peer = RawPeer::connect(
        &tc.url,
        "mute",
        shoal_proto::PROTOCOL_VERSION,
        Builtin::Iris,
    )
    .await;
    assert!(matches!(
        peer.next().await,
        Some(coordinator_message::Msg::Welcome(_))
    ));
    assert!(matches!(
        peer.next().await,
        Some(coordinator_message::Msg::Heartbeat(_))
    ));
    // The peer never answers; after the heartbeat timeout the coordinator drops it and ends its
    // stream.
    tc.wait_clients(0).await;
    while let Some(msg) = peer.next().await {
        assert!(matches!(msg, coordinator_message::Msg::Heartbeat(_)));
    }
    tc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_api_reports_unknown_jobs_and_bad_specs() {
    let tc = TestCoordinator::start().await;
    let mut jobs = tc.jobs().await;
    let err = jobs
        .get(v1::GetRequest {
            job_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = jobs
        .submit(v1::SubmitRequest {
            spec: "kind = \"train\"\nrounds = 0\n".into(),
            format: "toml".into(),
            initial_parameters: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("rounds"), "{}", err.message());

    // A queued job waiting for clients can be cancelled, and Watch then ends.
    let id = submit(&mut jobs, &digits_job(3, 2, "")).await;
    jobs.cancel(v1::CancelRequest { job_id: id.clone() })
        .await
        .unwrap();
    let (info, rounds) = finish(&mut jobs, &id, 20).await;
    assert_eq!(info.status, v1::JobStatus::Cancelled as i32);
    assert!(rounds.is_empty());
    let list = jobs.list(v1::ListRequest {}).await.unwrap().into_inner();
    assert_eq!(list.jobs.len(), 1);
    tc.stop().await;
}
