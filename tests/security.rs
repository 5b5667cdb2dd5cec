//! Hostile clients and credentials: every case of the hostile-client suite against a federation
//! of three honest clients with tokens, checked for a clear rejection, honest clients still
//! served, and the job's final accuracy equal to the same job with no hostile peer; tokens,
//! admin separation, and TLS with mutual TLS.

use std::sync::Arc;
use std::time::Duration;

use shoal_client::ClientConfig;
use shoal_coordinator::auth::{generate_certs, generate_tokens, AuthConfig, TokenSet};
use shoal_coordinator::CoordinatorConfig;
use shoal_proto::v1::{self, client_message, coordinator_message, task, task_result};
use shoal_shared::data::builtin::Builtin;
use shoal_shared::data::partition::Partitioner;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::util::{finish, submit, RawPeer, TestCoordinator};

const HONEST: usize = 3;

fn read_token(path: &std::path::Path) -> String {
    shoal_client::tls::read_token_file(path, "token").unwrap()
}

/// The job every case runs: 3 rounds of logistic regression on digits, a quorum of the three
/// honest clients, a short grace after it so a silent peer costs little.
fn job() -> String {
    "kind = \"train\"\ndataset = \"digits\"\nrounds = 3\n\
     [local]\nepochs = 2\n\
     [clients]\nmin_fit_clients = 3\nmin_available_clients = 3\nmin_evaluate_clients = 3\n\
     wait_after_quorum_secs = 0.3\nround_timeout_secs = 20\n"
        .to_string()
}

/// A coordinator that wants client and admin tokens, with three honest clients connected.
struct Federation {
    tc: TestCoordinator,
    dir: tempfile::TempDir,
    clients: Vec<CancellationToken>,
}

impl Federation {
    async fn start(tweak: impl FnOnce(&mut CoordinatorConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut names: Vec<String> = (0..HONEST).map(|i| format!("client-{i}")).collect();
        names.push("hostile".into());
        let files = generate_tokens(dir.path(), &names).unwrap();
        let mut config = CoordinatorConfig {
            print_rounds: false,
            hello_timeout: Duration::from_millis(500),
            auth: AuthConfig {
                client_tokens: Some(TokenSet::load(&files.client_hashes).unwrap()),
                client_certs: false,
                admin_tokens: Some(TokenSet::load(&files.admin_hashes).unwrap()),
            },
            ..CoordinatorConfig::default()
        };
        tweak(&mut config);
        let tc = TestCoordinator::start_with(config).await;
        let clients = (0..HONEST)
            .map(|i| {
                let mut c = shoal_client::Catalog::new();
                c.add_builtin(Builtin::Digits, &Partitioner::Iid, i, HONEST, 42)
                    .unwrap();
                let mut config = ClientConfig::new(&tc.url, format!("client-{i}"), c);
                config.token = Some(token(&dir, &format!("client-{i}")));
                let stop = CancellationToken::new();
                let s = stop.clone();
                tokio::spawn(async move { shoal_client::run(config, s.cancelled_owned()).await });
                stop
            })
            .collect();
        tc.wait_clients(HONEST).await;
        Federation { tc, dir, clients }
    }

    fn token(&self, name: &str) -> String {
        token(&self.dir, name)
    }

    /// Runs the job to its end and returns its final test accuracy and rounds.
    async fn run_job(&self) -> (f64, Vec<v1::RoundReport>) {
        let mut jobs = self.tc.jobs_with(Some(&self.token("admin"))).await;
        let id = submit(&mut jobs, &job()).await;
        let (info, rounds) = finish(&mut jobs, &id, 120).await;
        assert_eq!(
            info.status,
            v1::JobStatus::Finished as i32,
            "{}",
            info.error
        );
        (rounds.last().unwrap().test_accuracy.unwrap(), rounds)
    }

    async fn stop(self) {
        for c in &self.clients {
            c.cancel();
        }
        self.tc.stop().await;
    }
}

fn token(dir: &tempfile::TempDir, name: &str) -> String {
    read_token(&dir.path().join(format!("{name}.token")))
}

/// The final test accuracy of the job with no hostile peer, computed once.
async fn baseline() -> f64 {
    static BASELINE: OnceCell<f64> = OnceCell::const_new();
    *BASELINE
        .get_or_init(|| async {
            let fed = Federation::start(|_| {}).await;
            let (acc, _) = fed.run_job().await;
            fed.stop().await;
            acc
        })
        .await
}

fn hello(name: &str, token: &str) -> v1::Hello {
    let data = Builtin::Digits.holdout().unwrap();
    v1::Hello {
        max_message_bytes: 0,
        max_transfer_bytes: 0,
        protocol_version: shoal_proto::PROTOCOL_VERSION,
        client_name: name.into(),
        token: token.into(),
        datasets: vec![v1::DatasetInfo {
            name: "digits".into(),
            train_examples: 100,
            test_examples: 20,
            feature_names: data.feature_names.clone(),
            class_names: data.class_names.clone(),
        }],
        model_kinds: crate::util::builtin_kinds().0,
        task_kinds: crate::util::builtin_kinds().1,
    }
}

/// The Reject reason a peer gets, or what came instead.
async fn rejection(peer: &mut RawPeer) -> String {
    match peer.next().await {
        Some(coordinator_message::Msg::Reject(r)) => {
            assert!(peer.next().await.is_none(), "the stream ends after Reject");
            r.reason
        }
        other => panic!("expected Reject, got {other:?}"),
    }
}

/// How a hostile peer behaves over a job.
#[derive(Clone, Copy, PartialEq)]
enum Peer {
    /// Acts and ends (credential and Hello cases, floods): awaited after the job.
    Finite,
    /// Connects with valid credentials and keeps answering tasks: the job starts once it is
    /// connected, and it is stopped after the job.
    Serving,
}

/// Runs the job with `hostile` acting alongside; checks the job matches the baseline and
/// returns its rounds. A failed assertion inside `hostile` fails the test.
async fn with_hostile<F, Fut>(fed: &Federation, peer: Peer, hostile: F) -> Vec<v1::RoundReport>
where
    F: FnOnce(String, String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (acc, rounds) = job_beside(fed, peer, hostile).await;
    assert_eq!(
        acc,
        baseline().await,
        "a hostile peer changed the job's final accuracy"
    );
    rounds
}

/// Runs the job with `hostile` acting alongside and returns its final test accuracy and rounds.
async fn job_beside<F, Fut>(fed: &Federation, peer: Peer, hostile: F) -> (f64, Vec<v1::RoundReport>)
where
    F: FnOnce(String, String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let h = tokio::spawn(hostile(fed.tc.url.clone(), fed.token("hostile")));
    if peer == Peer::Serving {
        fed.tc.wait_clients(HONEST + 1).await;
    }
    let (acc, rounds) = fed.run_job().await;
    if peer == Peer::Serving {
        h.abort();
    }
    if let Err(e) = h.await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    (acc, rounds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_without_valid_credentials_are_rejected_and_never_get_a_task() {
    let fed = Federation::start(|_| {}).await;
    let url = fed.tc.url.clone();
    let honest_token = fed.token("client-0");
    let rounds = with_hostile(&fed, Peer::Finite, move |url2, _| async move {
        assert_eq!(url, url2);
        // No token.
        let mut p =
            RawPeer::with_first(&url2, client_message::Msg::Hello(hello("hostile", ""))).await;
        let r = rejection(&mut p).await;
        assert!(
            r.contains("unauthenticated") && r.contains("no token"),
            "{r}"
        );
        // A wrong token.
        let mut p = RawPeer::with_first(
            &url2,
            client_message::Msg::Hello(hello("hostile", "not-the-token")),
        )
        .await;
        let r = rejection(&mut p).await;
        assert!(r.contains("the token is not `hostile`'s"), "{r}");
        // Another client's token under its own name: tokens are bound to names.
        let mut p = RawPeer::with_first(
            &url2,
            client_message::Msg::Hello(hello("hostile", &honest_token)),
        )
        .await;
        let r = rejection(&mut p).await;
        assert!(r.contains("unauthenticated"), "{r}");
    })
    .await;
    // Nobody but the honest three ever took part.
    for r in &rounds {
        assert_eq!(r.clients_selected, HONEST as u32, "round {}", r.round);
    }
    assert_eq!(fed.tc.coord.registry().len(), HONEST);
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_hello_a_garbage_hello_and_a_wrong_version_are_rejected() {
    let fed = Federation::start(|_| {}).await;
    with_hostile(&fed, Peer::Finite, |url, token| async move {
        // No Hello at all: the stream is refused once the Hello timeout passes.
        let (tx, rx) = tokio::sync::mpsc::channel::<v1::ClientMessage>(1);
        let mut client =
            v1::federation_client::FederationClient::new(crate::util::channel(&url).await);
        let err = client
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap_err();
        drop(tx);
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
        assert!(
            err.message().contains("expected Hello"),
            "{}",
            err.message()
        );
        // A first message that is not a Hello.
        let mut p = RawPeer::with_first(
            &url,
            client_message::Msg::Heartbeat(v1::Heartbeat { unix_ms: 1 }),
        )
        .await;
        assert!(rejection(&mut p).await.contains("must be Hello"));
        // A garbage Hello: no name, no datasets.
        let garbage = v1::Hello {
            protocol_version: shoal_proto::PROTOCOL_VERSION,
            ..Default::default()
        };
        let mut p = RawPeer::with_first(&url, client_message::Msg::Hello(garbage)).await;
        let r = rejection(&mut p).await;
        assert!(r.contains("client_name"), "{r}");
        // A wrong protocol version, with a valid token.
        let mut old = hello("hostile", &token);
        old.protocol_version = 999;
        let mut p = RawPeer::with_first(&url, client_message::Msg::Hello(old)).await;
        assert!(rejection(&mut p).await.contains("999"));
    })
    .await;
    fed.stop().await;
}

/// An authenticated peer that answers every task through `answer`.
async fn answering_peer(
    url: &str,
    token: &str,
    answer: impl Fn(&v1::Task) -> Vec<v1::TaskResult> + Send + 'static,
) {
    answering_peer_with(url, hello("hostile", token), answer).await
}

/// [`answering_peer`] with its own Hello.
async fn answering_peer_with(
    url: &str,
    hello: v1::Hello,
    answer: impl Fn(&v1::Task) -> Vec<v1::TaskResult> + Send + 'static,
) {
    let mut p = RawPeer::with_first(url, client_message::Msg::Hello(hello)).await;
    assert!(matches!(
        p.next().await,
        Some(coordinator_message::Msg::Welcome(_))
    ));
    while let Some(msg) = p.next().await {
        if let coordinator_message::Msg::Task(t) = msg {
            for r in answer(&t) {
                p.send_result(r).await;
            }
        }
    }
}

fn fit_result(t: &v1::Task, corrupt: impl Fn(&mut v1::Tensor)) -> task_result::Outcome {
    match t.kind {
        Some(task::Kind::Fit(_)) => {
            let mut params = t.parameters.clone().unwrap();
            corrupt(&mut params.tensors[0]);
            task_result::Outcome::Fit(v1::FitResult {
                parameters: Some(params),
                num_examples: 100,
                train_loss: 0.5,
                control_delta: None,
                trees: None,
                delta: false,
            })
        }
        _ => task_result::Outcome::Error("this peer does not evaluate".into()),
    }
}

fn result(t: &v1::Task, outcome: task_result::Outcome) -> v1::TaskResult {
    v1::TaskResult {
        task_id: t.task_id.clone(),
        job_id: t.job_id.clone(),
        round: t.round,
        outcome: Some(outcome),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nan_updates_are_rejected_counted_per_client_and_quarantine_the_sender() {
    let fed = Federation::start(|_| {}).await;
    let rounds = with_hostile(&fed, Peer::Serving, |url, token| async move {
        answering_peer(&url, &token, |t| {
            vec![result(
                t,
                fit_result(t, |x| {
                    let mut d = x.data.to_vec();
                    d[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
                    x.data = d.into();
                }),
            )]
        })
        .await
    })
    .await;
    let hostile: u32 = rounds
        .iter()
        .filter_map(|r| r.rejected_by.get("hostile"))
        .sum();
    assert!(
        hostile >= 3,
        "refusals counted against the sender: {rounds:?}"
    );
    assert!(
        rounds
            .iter()
            .any(|r| r.quarantined == vec!["hostile".to_string()]),
        "the sender is quarantined after 3 refusals: {rounds:?}"
    );
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_shapes_other_clients_tasks_duplicates_and_late_results_are_refused() {
    let fed = Federation::start(|_| {}).await;
    let rounds = with_hostile(&fed, Peer::Serving, |url, token| async move {
        answering_peer(&url, &token, |t| {
            let wrong_shape = result(
                t,
                fit_result(t, |x| {
                    x.shape[0] += 1;
                    let mut d = x.data.to_vec();
                    d.extend_from_slice(&[0u8; 40]);
                    x.data = d.into();
                }),
            );
            // Results for the honest clients' tasks of this round: same job, round and kind,
            // nearby sequence numbers, their names.
            let parts: Vec<&str> = t.task_id.split('/').collect();
            let seq: u64 = parts[3].parse().unwrap();
            let mut out = vec![wrong_shape.clone(), wrong_shape];
            for s in seq.saturating_sub(4)..seq + 4 {
                for c in 0..HONEST {
                    let id = format!("{}/{}/{}/{s:010}/client-{c}", parts[0], parts[1], parts[2]);
                    let mut r = result(t, task_result::Outcome::Error("mine now".into()));
                    r.task_id = id;
                    out.push(r);
                }
            }
            out
        })
        .await
    })
    .await;
    let hostile: u32 = rounds
        .iter()
        .filter_map(|r| r.rejected_by.get("hostile"))
        .sum();
    // The first answer per task is judged (wrong shape), the duplicate and the results for
    // others' tasks are refused by the registry; until the peer is quarantined.
    assert!(hostile >= 3, "{rounds:?}");
    for r in &rounds {
        for c in 0..HONEST {
            assert!(
                !r.rejected_by.contains_key(&format!("client-{c}")),
                "an honest client's result was refused: {r:?}"
            );
        }
    }
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_after_the_deadline_is_refused() {
    let fed = Federation::start(|_| {}).await;
    let late = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let sent = late.clone();
    let rounds = with_hostile(&fed, Peer::Serving, move |url, token| async move {
        let mut p =
            RawPeer::with_first(&url, client_message::Msg::Hello(hello("hostile", &token))).await;
        assert!(matches!(
            p.next().await,
            Some(coordinator_message::Msg::Welcome(_))
        ));
        while let Some(msg) = p.next().await {
            if let coordinator_message::Msg::Task(t) = msg {
                // Answer round 1's fit task well after its phase closed (quorum + 0.3 s grace).
                if t.round != 1 || !matches!(t.kind, Some(task::Kind::Fit(_))) {
                    continue;
                }
                let tx = p.tx.clone();
                let sent = sent.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    let r = result(&t, fit_result(&t, |_| {}));
                    let _ = tx
                        .send(v1::ClientMessage {
                            msg: Some(client_message::Msg::Result(r)),
                        })
                        .await;
                    sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        }
    })
    .await;
    // The late result was sent while the job still ran, and refused.
    assert_eq!(late.load(std::sync::atomic::Ordering::SeqCst), 1);
    let hostile: u32 = rounds
        .iter()
        .filter_map(|r| r.rejected_by.get("hostile"))
        .sum();
    assert_eq!(hostile, 1, "{rounds:?}");
    // Marked late (the Watch API carries it), so it does not count towards quarantine.
    let late: u32 = rounds.iter().filter_map(|r| r.late_by.get("hostile")).sum();
    assert_eq!(late, 1, "{rounds:?}");
    assert!(rounds.iter().all(|r| r.quarantined.is_empty()));
    assert!(rounds.iter().all(|r| r.clients == HONEST as u32));
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_over_the_size_limit_ends_only_that_stream() {
    let fed = Federation::start(|c| c.max_message_bytes = 1024 * 1024).await;
    with_hostile(&fed, Peer::Finite, |url, token| async move {
        let mut p =
            RawPeer::with_first(&url, client_message::Msg::Hello(hello("hostile", &token))).await;
        assert!(matches!(
            p.next().await,
            Some(coordinator_message::Msg::Welcome(_))
        ));
        // 2 MiB of loss text in one result: over the 1 MiB limit.
        p.send_result(v1::TaskResult {
            task_id: "x".repeat(2 * 1024 * 1024),
            ..Default::default()
        })
        .await;
        let end = tokio::time::timeout(Duration::from_secs(10), p.rx.message()).await;
        match end {
            Ok(Err(status)) => assert!(
                matches!(
                    status.code(),
                    tonic::Code::OutOfRange
                        | tonic::Code::ResourceExhausted
                        | tonic::Code::Internal
                ),
                "{status:?}"
            ),
            Ok(Ok(None)) => {}
            Ok(Ok(Some(m))) => {
                // Heartbeats may come first; the stream must still end.
                let _ = m;
                tokio::time::timeout(Duration::from_secs(10), async {
                    while let Ok(Some(_)) = p.rx.message().await {}
                })
                .await
                .expect("the oversized sender's stream did not end");
            }
            Err(_) => panic!("the oversized sender's stream did not end"),
        }
    })
    .await;
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_hellos_is_refused_then_turned_away_and_valid_credentials_still_get_in() {
    let fed = Federation::start(|c| c.auth_failures_per_minute = 20).await;
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = outcomes.clone();
    with_hostile(&fed, Peer::Finite, move |url, token| async move {
        let mut floods = Vec::new();
        for i in 0..200 {
            let url = url.clone();
            floods.push(tokio::spawn(async move {
                match RawPeer::try_with_first(
                    &url,
                    client_message::Msg::Hello(hello(&format!("flood-{i}"), "guess")),
                )
                .await
                {
                    Ok(mut p) => match p.next().await {
                        Some(coordinator_message::Msg::Reject(r)) => {
                            format!("reject: {}", r.reason)
                        }
                        other => format!("unexpected: {other:?}"),
                    },
                    Err(s) => format!("status {:?}: {}", s.code(), s.message()),
                }
            }));
        }
        for f in floods {
            let outcome = f.await.unwrap();
            seen.lock().unwrap().push(outcome);
        }
        // Valid credentials from the flooded address still get in.
        let mut p =
            RawPeer::with_first(&url, client_message::Msg::Hello(hello("hostile", &token))).await;
        assert!(matches!(
            p.next().await,
            Some(coordinator_message::Msg::Welcome(_))
        ));
    })
    .await;
    let outcomes = outcomes.lock().unwrap().clone();
    assert_eq!(outcomes.len(), 200);
    let rejected = outcomes
        .iter()
        .filter(|o| o.starts_with("reject: unauthenticated"))
        .count();
    let turned_away = outcomes
        .iter()
        .filter(|o| o.contains("ResourceExhausted") && o.contains("too many failed attempts"))
        .count();
    assert_eq!(rejected + turned_away, 200, "{outcomes:?}");
    assert!(
        turned_away >= 150,
        "the budget of 20 turned the rest away: {turned_away}"
    );
    fed.tc.wait_clients(HONEST).await;
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_credentials_cannot_use_the_jobs_service() {
    let fed = Federation::start(|_| {}).await;
    for token in [
        None,
        Some(fed.token("client-0")),
        Some("made-up".to_string()),
    ] {
        let mut jobs = fed.tc.jobs_with(token.as_deref()).await;
        let err = jobs.list(v1::ListRequest {}).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::Unauthenticated,
            "{token:?}: {err:?}"
        );
        let err = jobs
            .submit(v1::SubmitRequest {
                spec: job(),
                format: "toml".into(),
                initial_parameters: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = jobs
            .cancel(v1::CancelRequest {
                job_id: "any".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    let mut admin = fed.tc.jobs_with(Some(&fed.token("admin"))).await;
    assert!(admin.list(v1::ListRequest {}).await.is_ok());
    // The admin token is no client token either.
    let mut p = RawPeer::with_first(
        &fed.tc.url,
        client_message::Msg::Hello(hello("admin", &fed.token("admin"))),
    )
    .await;
    assert!(rejection(&mut p).await.contains("unauthenticated"));
    fed.stop().await;
}

#[test]
fn clients_must_authenticate_only_with_admin_credentials_set() {
    let dir = tempfile::tempdir().unwrap();
    let files = generate_tokens(dir.path(), &["a".into()]).unwrap();
    let config = CoordinatorConfig {
        auth: AuthConfig {
            client_tokens: Some(TokenSet::load(&files.client_hashes).unwrap()),
            client_certs: false,
            admin_tokens: None,
        },
        ..CoordinatorConfig::default()
    };
    let err = shoal_coordinator::Coordinator::new(
        config,
        shoal_coordinator::state::Store::in_memory().unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--admin-tokens"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_lets_in_only_certified_clients_under_their_own_names() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..HONEST).map(|i| format!("client-{i}")).collect();
    let certs = generate_certs(
        dir.path(),
        &["localhost".into(), "127.0.0.1".into()],
        &names,
    )
    .unwrap();
    let tokens = generate_tokens(dir.path(), &[]).unwrap();
    let tls =
        shoal_coordinator::auth::server_tls(&certs.server_cert, &certs.server_key, Some(&certs.ca))
            .unwrap();
    let tc = TestCoordinator::start_with(CoordinatorConfig {
        print_rounds: false,
        tls: Some(tls),
        auth: AuthConfig {
            client_tokens: None,
            client_certs: true,
            admin_tokens: Some(TokenSet::load(&tokens.admin_hashes).unwrap()),
        },
        ..CoordinatorConfig::default()
    })
    .await;
    let url = tc.url.replace("http://", "https://");
    let files = |name: &str| shoal_client::TlsFiles {
        ca: Some(certs.ca.clone()),
        cert: Some(dir.path().join(format!("{name}.pem"))),
        key: Some(dir.path().join(format!("{name}.key"))),
        tls_domain: None,
    };
    let start = |name: &str, cert_of: &str, i: usize| {
        let mut c = shoal_client::Catalog::new();
        c.add_builtin(Builtin::Digits, &Partitioner::Iid, i, HONEST, 42)
            .unwrap();
        let mut config = ClientConfig::new(&url, name, c);
        config.tls = files(cert_of).load().unwrap();
        config.give_up_after = Some(Duration::from_secs(5));
        let stop = CancellationToken::new();
        let s = stop.clone();
        (
            stop,
            tokio::spawn(async move { shoal_client::run(config, s.cancelled_owned()).await }),
        )
    };
    let honest: Vec<_> = (0..HONEST)
        .map(|i| start(&format!("client-{i}"), &format!("client-{i}"), i))
        .collect();
    tc.wait_clients(HONEST).await;
    // client-1's certificate under another name: refused, and told why.
    let (_s, impostor) = start("impostor", "client-1", 0);
    match impostor.await.unwrap() {
        Err(shoal_client::ClientError::Rejected(r)) => {
            assert!(
                r.contains("certificate is `client-1`'s, not `impostor`'s"),
                "{r}"
            )
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // No client certificate: the TLS handshake fails, so the client never gets a stream.
    let mut c = shoal_client::Catalog::new();
    c.add_builtin(Builtin::Digits, &Partitioner::Iid, 0, HONEST, 42)
        .unwrap();
    let mut anonymous = ClientConfig::new(&url, "anonymous", c);
    anonymous.tls = shoal_client::TlsFiles {
        ca: Some(certs.ca.clone()),
        ..Default::default()
    }
    .load()
    .unwrap();
    anonymous.give_up_after = Some(Duration::from_millis(500));
    assert!(matches!(
        shoal_client::run(anonymous, std::future::pending()).await,
        Err(shoal_client::ClientError::Unreachable { .. })
    ));
    // Plaintext to a TLS coordinator gets nowhere either.
    assert!(
        shoal_client::endpoint(&tc.url)
            .unwrap()
            .connect()
            .await
            .is_err()
            || {
                let mut p = v1::federation_client::FederationClient::new(
                    crate::util::channel(&tc.url).await,
                );
                let (_tx, rx) = tokio::sync::mpsc::channel::<v1::ClientMessage>(1);
                p.connect(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .is_err()
            }
    );
    assert_eq!(tc.coord.registry().len(), HONEST);
    // A job over mutual TLS, submitted with an admin certificate... and token.
    let admin_tls = files("client-0").load().unwrap();
    let mut jobs = shoal_coordinator::cli::connect_jobs_with(
        &url,
        admin_tls.as_ref(),
        Some(&read_token(&tokens.tokens[0].1)),
    )
    .await
    .unwrap();
    let id = submit(&mut jobs, &job()).await;
    let (info, rounds) = finish(&mut jobs, &id, 120).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert_eq!(rounds.len(), 3);
    assert!(rounds.last().unwrap().test_accuracy.unwrap() > 0.85);
    for (stop, _) in honest {
        stop.cancel();
    }
    tc.stop().await;
}

/// Token files re-read without a restart (`serve` does it on SIGHUP): a rotated token's old
/// session is disconnected and the old token refused, a new client's token works at once, a
/// removed one no longer does, untouched clients keep their sessions, and admin tokens rotate
/// the same way. A reload that would turn token checks off is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloaded_token_files_rotate_revoke_and_add_without_a_restart() {
    use shoal_coordinator::auth::{hash_token, new_token};
    let fed = Federation::start(|_| {}).await;
    let (rotated, newcomer, admin) = (new_token(), new_token(), new_token());
    let clients = format!(
        "client-0 {}\nclient-1 {}\nclient-2 {}\nnewcomer {}\n",
        hash_token(&fed.token("client-0")),
        hash_token(&rotated),
        hash_token(&fed.token("client-2")),
        hash_token(&newcomer),
    );
    let clients = TokenSet::parse(&clients, "new client tokens").unwrap();
    let admins = TokenSet::parse(&format!("admin {}\n", hash_token(&admin)), "new admin").unwrap();
    let coord = fed.tc.coord.clone();
    let dropped = coord
        .reload_tokens(Some(clients.clone()), Some(admins.clone()))
        .unwrap();
    assert_eq!(dropped, vec!["client-1".to_string()]);
    // client-1's own process comes back with its old token and is refused for good.
    fed.tc.wait_clients(HONEST - 1).await;
    let names = |coord: &shoal_coordinator::Coordinator| -> Vec<String> {
        coord
            .registry()
            .available("digits")
            .into_iter()
            .map(|c| c.name)
            .collect()
    };
    assert_eq!(names(&coord), ["client-0", "client-2"]);

    let url = fed.tc.url.clone();
    let old = fed.token("client-1");
    let hello_with = |name: &str, token: &str| client_message::Msg::Hello(hello(name, token));
    let r = rejection(&mut RawPeer::with_first(&url, hello_with("client-1", &old)).await).await;
    assert!(r.contains("not `client-1`'s"), "{r}");
    let r = rejection(
        &mut RawPeer::with_first(&url, hello_with("hostile", &fed.token("hostile"))).await,
    )
    .await;
    assert!(r.contains("unauthenticated"), "{r}");
    let mut back = RawPeer::with_first(&url, hello_with("client-1", &rotated)).await;
    assert!(matches!(
        back.next().await,
        Some(coordinator_message::Msg::Welcome(_))
    ));
    let mut new = RawPeer::with_first(&url, hello_with("newcomer", &newcomer)).await;
    assert!(matches!(
        new.next().await,
        Some(coordinator_message::Msg::Welcome(_))
    ));

    // Admin tokens: the old one is refused, the new one lets the operator in.
    let err = fed
        .tc
        .jobs_with(Some(&fed.token("admin")))
        .await
        .list(v1::ListRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    fed.tc
        .jobs_with(Some(&admin))
        .await
        .list(v1::ListRequest {})
        .await
        .unwrap();

    // Turning client token checks off by a reload is refused; the new sets stay in force.
    let err = coord.reload_tokens(None, Some(admins)).unwrap_err();
    assert!(err.to_string().contains("on or off"), "{err}");
    let r = rejection(&mut RawPeer::with_first(&url, hello_with("client-1", &old)).await).await;
    assert!(r.contains("not `client-1`'s"), "{r}");
    drop((back, new));
    fed.stop().await;
}

/// S9 #7: what a peer sends (task ids, error texts, requested job ids) reaches the log and the
/// status messages cut and escaped, and a flood of refused results costs a few log lines. On
/// the old main, a newline in a task id forged log lines with a chosen timestamp and level, each
/// refusal was a line of its own, and a status echoed a whole 1 MiB id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_strings_cannot_forge_or_flood_the_log_or_a_status() {
    const FORGED: &str = "2099-01-01T00:00:00.000000Z ERROR forged by a peer";
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut serve = std::process::Command::new(crate::util::bin("shoal-coordinator"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--out")
        .arg(dir.path().join("runs"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut peer = RawPeer::connect(
        &url,
        "flooder",
        shoal_proto::PROTOCOL_VERSION,
        Builtin::Iris,
    )
    .await;
    assert!(matches!(
        peer.next().await,
        Some(coordinator_message::Msg::Welcome(_))
    ));
    let padding = "A".repeat(4096);
    for i in 0..2000 {
        peer.send_result(v1::TaskResult {
            task_id: format!("t{i}\n{FORGED}{padding}"),
            job_id: format!("j\n{FORGED}"),
            round: 1,
            outcome: Some(task_result::Outcome::Error(format!("e\n{FORGED}"))),
        })
        .await;
    }
    let mut jobs = shoal_coordinator::cli::connect_jobs_with(&url, None, None)
        .await
        .unwrap();
    let status = jobs
        .get(v1::GetRequest {
            job_id: format!("{}\n{FORGED}", "x".repeat(1 << 20)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(
        status.message().len() < 512 && !status.message().contains('\n'),
        "{} bytes",
        status.message().len()
    );
    // Every result reached the coordinator once the stream is closed and the peer is gone; the
    // session's end writes the summary. Wait for it (a loaded machine takes more than a second
    // to work through 8 MB of results), up to a bound, then stop the server either way.
    drop(peer);
    let waited = std::time::Instant::now();
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("refused=")
        && waited.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::process::Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    let _ = serve.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().all(|l| !l.starts_with("2099-01-01")),
        "a forged line: {}",
        lines.iter().find(|l| l.starts_with("2099")).unwrap()
    );
    let longest = lines.iter().map(|l| l.len()).max().unwrap_or(0);
    assert!(longest < 2048, "a log line of {longest} bytes");
    let refused = lines.iter().filter(|l| l.contains("refused")).count();
    assert!(
        refused <= 10,
        "{refused} log lines about refused results (of 2000)"
    );
    // One summary line counts the rest of the flood: 1995 when every result got through before
    // the peer dropped its stream; the last few (the peer's queue of 16 and what was in flight)
    // may be cut off with it, which is the peer's loss, not the coordinator's.
    let summarised: u64 = text
        .split("refused=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        (1995 - 64..=1995).contains(&summarised),
        "the flood is summarised ({summarised}):\n{}",
        lines[lines.len().saturating_sub(10)..].join("\n")
    );
}

/// A fit answer that replaces every parameter through `update`.
fn fit_with(t: &v1::Task, update: fn(&mut [f32]), examples: u64) -> task_result::Outcome {
    let mut params = t.parameters.clone().unwrap();
    for x in &mut params.tensors {
        let mut v: Vec<f32> = x
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        update(&mut v);
        x.data = v
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect::<Vec<u8>>()
            .into();
    }
    task_result::Outcome::Fit(v1::FitResult {
        parameters: Some(params),
        num_examples: examples,
        train_loss: 0.5,
        control_delta: None,
        trees: None,
        delta: false,
    })
}

/// S9 #1: a peer that announces 2^64-1 examples and sends all-zero weights with that count held
/// the global model at zeros (test accuracy 0.100 in every round, 0.950 without it). Its count
/// now weighs at most `updates.weight_cap` times the round's median, and its update is scaled
/// back or refused by its distance from the global model: the job keeps the clean run's
/// accuracy within two points (it cannot equal it while the peer's bounded update is averaged
/// in) and never drops to chance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_cannot_set_its_own_weight_by_what_it_announces() {
    let fed = Federation::start(|_| {}).await;
    let mut h = hello("hostile", &fed.token("hostile"));
    h.datasets[0].train_examples = u64::MAX;
    h.datasets[0].test_examples = u64::MAX;
    let (acc, rounds) = job_beside(&fed, Peer::Serving, move |url, _| async move {
        answering_peer_with(&url, h, move |t| {
            let outcome = match t.kind {
                Some(task::Kind::Fit(_)) => fit_with(t, |v| v.fill(0.0), u64::MAX),
                _ => task_result::Outcome::Evaluate(v1::EvaluateResult {
                    num_examples: u64::MAX,
                    loss: 3.0,
                    accuracy: 0.0,
                    classes_present: 10,
                    personalized_accuracy: None,
                }),
            };
            vec![result(t, outcome)]
        })
        .await
    })
    .await;
    let clean = baseline().await;
    println!("final test accuracy {acc:.4} beside the peer, {clean:.4} without it; {rounds:?}");
    for r in &rounds {
        assert!(r.test_accuracy.unwrap() > 0.5, "held near chance: {r:?}");
        // Its evaluation counts as three median clients at most: 3 of 6 shares.
        assert!(
            r.fed_accuracy.unwrap() > 0.4,
            "the peer's evaluation outweighs the other three: {r:?}"
        );
    }
    assert!(
        (acc - clean).abs() <= 0.02,
        "the peer moved the final accuracy from {clean} to {acc}"
    );
    fed.stop().await;
}

/// S9 #2: one finite update of +-1e38 values, accepted when no `updates.max_norm` is set, made the
/// honest clients diverge to NaN two rounds later and failed the job. Far beyond the round's
/// median distance, it is now refused (`updates.adaptive_refuse`), every round, until the peer
/// is quarantined; the job's accuracy is the clean run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finite_update_of_any_size_cannot_derail_the_job() {
    let fed = Federation::start(|_| {}).await;
    let rounds = with_hostile(&fed, Peer::Serving, |url, token| async move {
        answering_peer(&url, &token, |t| {
            let huge = |v: &mut [f32]| {
                for (i, x) in v.iter_mut().enumerate() {
                    *x = if i % 2 == 0 { 1e38 } else { -1e38 };
                }
            };
            let outcome = match t.kind {
                Some(task::Kind::Fit(_)) => fit_with(t, huge, 100),
                _ => task_result::Outcome::Evaluate(v1::EvaluateResult {
                    num_examples: 20,
                    loss: 2.0,
                    accuracy: 0.5,
                    classes_present: 10,
                    personalized_accuracy: None,
                }),
            };
            vec![result(t, outcome)]
        })
        .await
    })
    .await;
    let refused: Vec<u32> = rounds
        .iter()
        .map(|r| r.rejected_by.get("hostile").copied().unwrap_or(0))
        .collect();
    assert_eq!(refused, vec![1, 1, 1], "{rounds:?}");
    assert_eq!(rounds[2].quarantined, vec!["hostile".to_string()]);
    fed.stop().await;
}

/// S9: a peer that is selected and never answers was selected every round, and every round
/// waited for it. Three silent rounds in a row now quarantine it like three refused results, and
/// it is told why on its stream; the job's accuracy is the clean run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_selected_peer_that_never_answers_is_quarantined_and_told() {
    let fed = Federation::start(|_| {}).await;
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let heard = told.clone();
    let rounds = with_hostile(&fed, Peer::Serving, move |url, token| async move {
        let mut p =
            RawPeer::with_first(&url, client_message::Msg::Hello(hello("hostile", &token))).await;
        while let Some(msg) = p.next().await {
            if let coordinator_message::Msg::Notice(n) = msg {
                heard.lock().unwrap().push(n.message);
            }
        }
    })
    .await;
    let selected: Vec<u32> = rounds.iter().map(|r| r.clients_selected).collect();
    assert_eq!(selected, vec![4, 4, 4], "{rounds:?}");
    assert_eq!(rounds[2].quarantined, vec!["hostile".to_string()]);
    assert!(
        rounds.iter().all(|r| r.rejected == 0),
        "silence is not a refusal"
    );
    let told = told.lock().unwrap().clone();
    assert!(
        told.iter()
            .any(|m| m.contains("did not answer its tasks in 3 rounds in a row")),
        "{told:?}"
    );
    fed.stop().await;
}

/// A peer may send in chunks only a result it owes, no larger than that task's model: a chunked
/// message it does not owe (here a terabyte, then 100 bytes) ends its stream at the first chunk,
/// before anything is allocated, and the coordinator serves the next peer as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_messages_a_peer_does_not_owe_end_its_stream() {
    let tc = TestCoordinator::start().await;
    for total in [1u64 << 40, 100] {
        let mut peer = RawPeer::connect(
            &tc.url,
            "chunker",
            shoal_proto::PROTOCOL_VERSION,
            Builtin::Iris,
        )
        .await;
        match peer.next().await {
            Some(coordinator_message::Msg::Welcome(w)) => assert!(w.max_transfer_bytes > 0),
            other => panic!("expected Welcome, got {other:?}"),
        }
        let _ = peer
            .tx
            .send(v1::ClientMessage {
                msg: Some(client_message::Msg::Chunk(v1::Chunk {
                    total_bytes: total,
                    offset: 0,
                    data: vec![0u8; 10].into(),
                })),
            })
            .await;
        // Heartbeats may come first; the stream then ends.
        let ended = async {
            loop {
                match peer.next().await {
                    Some(coordinator_message::Msg::Heartbeat(_)) => continue,
                    None => break,
                    other => panic!("expected the stream to end, got {other:?}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), ended)
            .await
            .unwrap_or_else(|_| panic!("a chunked message of {total} bytes left the stream open"));
    }
    let mut peer = RawPeer::connect(
        &tc.url,
        "after",
        shoal_proto::PROTOCOL_VERSION,
        Builtin::Iris,
    )
    .await;
    assert!(matches!(
        peer.next().await,
        Some(coordinator_message::Msg::Welcome(_))
    ));
    tc.stop().await;
}

/// Large updates enter the coordinator two at a time (the intake). Two peers that start a
/// chunked update and stop after its first chunk would hold both places for good; each must
/// finish within its grace (1 s here, 30 s by default) plus a second per MiB, or it is dropped and
/// its place freed, so the honest clients' chunked updates still make the round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_that_stall_half_way_through_an_update_do_not_hold_up_the_round() {
    use shoal_client::Catalog;
    let tc = TestCoordinator::start_with(CoordinatorConfig {
        chunk_bytes: 64 * 1024,
        transfer_grace: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let mut stops = Vec::new();
    for i in 0..2 {
        let mut catalog = Catalog::new();
        catalog
            .add_builtin(Builtin::Digits, &Partitioner::Iid, i, 2, 42)
            .unwrap();
        let mut config = ClientConfig::new(&tc.url, format!("honest-{i}"), catalog);
        config.chunk_bytes = 64 * 1024;
        stops.push(crate::util::spawn_client(config).0);
    }
    let mut stallers = Vec::new();
    for i in 0..2 {
        let mut peer = RawPeer::connect(
            &tc.url,
            &format!("staller-{i}"),
            shoal_proto::PROTOCOL_VERSION,
            Builtin::Digits,
        )
        .await;
        assert!(matches!(
            peer.next().await,
            Some(coordinator_message::Msg::Welcome(_))
        ));
        stallers.push(peer);
    }
    tc.wait_clients(4).await;
    let mut jobs = tc.jobs().await;
    // mlp(64, 2048, 10): 615 kB an update, ten 64 KiB chunks.
    let id = submit(
        &mut jobs,
        "kind = \"train\"\ndataset = \"digits\"\nrounds = 1\n[model]\nkind = \"mlp\"\nhidden = [2048]\n\
         [clients]\nmin_available_clients = 4\nmin_fit_clients = 2\nmin_evaluate_clients = 2\n\
         wait_after_quorum_secs = 1\nround_timeout_secs = 30\n\
         [evaluation]\ncentralized_baseline = false\n",
    )
    .await;
    // Each staller takes its task and starts a 600 kB update: one chunk, then nothing.
    for peer in &mut stallers {
        loop {
            match peer.next().await {
                Some(coordinator_message::Msg::Task(_)) => break,
                Some(_) => continue,
                None => panic!("the staller's stream ended before its task"),
            }
        }
        peer.tx
            .send(v1::ClientMessage {
                msg: Some(client_message::Msg::Chunk(v1::Chunk {
                    total_bytes: 600_000,
                    offset: 0,
                    data: vec![0u8; 1000].into(),
                })),
            })
            .await
            .unwrap();
    }
    let (info, rounds) = finish(&mut jobs, &id, 25).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert_eq!(rounds.len(), 1);
    assert_eq!(rounds[0].clients, 2, "{:?}", rounds[0]);
    // The stallers were dropped.
    for peer in &mut stallers {
        let ended = async {
            while let Some(m) = peer.next().await {
                assert!(
                    !matches!(m, coordinator_message::Msg::Task(_)),
                    "a staller was sent another task"
                );
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ended)
            .await
            .expect("a staller's stream stayed open");
    }
    for s in stops {
        s.cancel();
    }
    tc.stop().await;
}
