//! Models trained in client code (`[model] kind = "external"`), and clients that say what they run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use shoal_client::{
    ClientConfig, EvaluateConfig, EvaluateOutcome, FitConfig, FitOutcome, Trainer, TrainerDataset,
    TrainerError,
};
use shoal_shared::tensor::Weights;

use super::*;
use crate::util::spawn_client;

#[path = "../../client/examples/custom_trainer.rs"]
mod custom_trainer;

/// The example job with fewer rounds.
fn external_job(rounds: u32) -> String {
    include_str!("../../examples/external-digits.toml")
        .replace("rounds = 20", &format!("rounds = {rounds}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_trainers_federate_their_own_model_through_every_round() {
    let tc = TestCoordinator::start().await;
    let mut stops = Vec::new();
    for i in 0..3 {
        let trainer = custom_trainer::SoftmaxTrainer::digits_shard(i, 3).unwrap();
        let config = ClientConfig::with_trainer(&tc.url, format!("trainer-{i}"), Arc::new(trainer));
        stops.push(spawn_client(config).0);
    }
    let mut jobs = tc.jobs().await;
    let id = submit(&mut jobs, &external_job(8)).await;
    let (info, rounds) = finish(&mut jobs, &id, 120).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert_eq!(rounds.len(), 8);
    assert!(rounds.iter().all(|r| r.clients == 3 && r.rejected == 0));
    // The coordinator cannot run client code: accuracy is the clients' federated evaluation.
    assert!(rounds.iter().all(|r| r.test_accuracy.is_none()));
    let first = rounds[0].fed_accuracy.unwrap();
    let last = rounds.last().unwrap().fed_accuracy.unwrap();
    assert!(
        last > 0.85 && last > first,
        "fed accuracy {first} -> {last}"
    );
    for s in stops {
        s.cancel();
    }
    tc.stop().await;
}

/// A trainer that announces a dataset and counts the tasks it is given.
#[derive(Debug, Default)]
struct Counting {
    calls: AtomicUsize,
}

impl Trainer for Counting {
    fn datasets(&self) -> Vec<TrainerDataset> {
        let iris = Builtin::Iris.holdout().unwrap();
        vec![TrainerDataset {
            name: "iris".into(),
            train_examples: 40,
            test_examples: 10,
            feature_names: iris.feature_names.clone(),
            class_names: iris.class_names.clone(),
        }]
    }

    fn fit(&self, _: Weights, _: &FitConfig) -> Result<FitOutcome, TrainerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err("not expected".into())
    }

    fn evaluate(&self, _: &Weights, _: &EvaluateConfig) -> Result<EvaluateOutcome, TrainerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err("not expected".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_runs_only_external_models_is_never_sent_boosting_tasks() {
    let tc = TestCoordinator::start().await;
    let counting = Arc::new(Counting::default());
    let (trainer_stop, _) = spawn_client(ClientConfig::with_trainer(
        &tc.url,
        "python-like",
        counting.clone(),
    ));
    let builtin: Vec<_> = (0..2)
        .map(|i| start_client(&tc.url, Builtin::Iris, Partitioner::Iid, i, 2).0)
        .collect();
    tc.wait_clients(3).await;
    let mut jobs = tc.jobs().await;
    let job = "kind = \"train\"\ndataset = \"iris\"\nrounds = 3\n[model]\nkind = \"gbdt\"\n\
               [clients]\nmin_available_clients = 2\nmin_fit_clients = 2\nmin_evaluate_clients = 2\n";
    let id = submit(&mut jobs, job).await;
    let (info, rounds) = finish(&mut jobs, &id, 120).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert!(rounds
        .iter()
        .all(|r| r.clients == 2 && r.rejected == 0 && r.quarantined.is_empty()));
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        0,
        "no task reached the trainer"
    );

    // A job only the trainer could run, without enough trainers: the wait says why the others
    // do not count.
    let external = "kind = \"train\"\ndataset = \"iris\"\nrounds = 1\n[model]\nkind = \"external\"\n\
                    tensors = [{ name = \"w\", shape = [4, 3] }]\n\
                    [clients]\nmin_available_clients = 2\nmin_fit_clients = 1\nmin_evaluate_clients = 1\n\
                    wait_for_clients_secs = 0.5\n";
    let id = submit(&mut jobs, external).await;
    let (info, _) = finish(&mut jobs, &id, 60).await;
    assert_eq!(info.status, v1::JobStatus::Failed as i32);
    assert!(
        info.error.contains("saw 1")
            && info
                .error
                .contains("2 more hold it but do not run model kind `external`"),
        "{}",
        info.error
    );
    trainer_stop.cancel();
    for s in builtin {
        s.cancel();
    }
    tc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_must_say_what_the_client_runs() {
    let tc = TestCoordinator::start().await;
    let (models, tasks) = crate::util::builtin_kinds();
    let data = Builtin::Iris.holdout().unwrap();
    let hello = |model_kinds: Vec<String>, task_kinds: Vec<String>| {
        v1::client_message::Msg::Hello(v1::Hello {
            protocol_version: shoal_proto::PROTOCOL_VERSION,
            client_name: "caps".into(),
            token: String::new(),
            datasets: vec![v1::DatasetInfo {
                name: "iris".into(),
                train_examples: 10,
                test_examples: 2,
                feature_names: data.feature_names.clone(),
                class_names: data.class_names.clone(),
            }],
            model_kinds,
            task_kinds,
        })
    };
    for (first, says) in [
        (hello(vec![], tasks.clone()), "Hello.model_kinds"),
        (
            hello(vec!["resnet".into()], tasks.clone()),
            "`resnet` is not a model kind",
        ),
        (hello(models.clone(), vec![]), "Hello.task_kinds"),
        (
            hello(models.clone(), vec!["train".into()]),
            "`train` is not a task kind",
        ),
    ] {
        let mut peer = RawPeer::with_first(&tc.url, first).await;
        match peer.next().await {
            Some(coordinator_message::Msg::Reject(r)) => {
                assert!(r.reason.contains(says), "{}", r.reason)
            }
            other => panic!("expected Reject for {says}, got {other:?}"),
        }
    }
    assert!(tc.coord.registry().is_empty());
    tc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_refuses_an_external_model_with_the_way_out() {
    let spec = shoal_coordinator::spec::CheckedSpec::from_toml(&external_job(2))
        .unwrap()
        .into_spec();
    let o = shoal_coordinator::simulate::SimulateOptions::new(spec, Builtin::Digits);
    let err = shoal_coordinator::simulate::simulate(o)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot train an external model") && err.contains("serve"),
        "{err}"
    );
}
