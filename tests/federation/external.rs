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
            max_message_bytes: 0,
            max_transfer_bytes: 0,
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

/// Wraps the example trainer: keeps the parameters of every round-1 fit, and counts requests
/// for initial parameters (answering them as the example does).
#[derive(Debug)]
struct Recording {
    inner: custom_trainer::SoftmaxTrainer,
    offers: bool,
    first_fits: Arc<std::sync::Mutex<Vec<Weights>>>,
    given: Arc<std::sync::Mutex<Vec<Weights>>>,
}

impl Trainer for Recording {
    fn datasets(&self) -> Vec<TrainerDataset> {
        self.inner.datasets()
    }

    fn fit(&self, parameters: Weights, config: &FitConfig) -> Result<FitOutcome, TrainerError> {
        if config.round == 1 {
            self.first_fits.lock().unwrap().push(parameters.clone());
        }
        self.inner.fit(parameters, config)
    }

    fn evaluate(
        &self,
        parameters: &Weights,
        config: &EvaluateConfig,
    ) -> Result<EvaluateOutcome, TrainerError> {
        self.inner.evaluate(parameters, config)
    }

    fn offers_initial_parameters(&self) -> bool {
        self.offers
    }

    fn initial_parameters(
        &self,
        config: &shoal_client::InitialConfig,
    ) -> Result<Weights, TrainerError> {
        let w = self.inner.initial_parameters(config)?;
        self.given.lock().unwrap().push(w.clone());
        Ok(w)
    }
}

type Shared = Arc<std::sync::Mutex<Vec<Weights>>>;

/// Three recording trainers on digits; `offering` of them give initial parameters.
fn recording_trainers(
    url: &str,
    offering: usize,
) -> (Vec<tokio_util::sync::CancellationToken>, Shared, Shared) {
    let (first_fits, given): (Shared, Shared) = Default::default();
    let stops = (0..3)
        .map(|i| {
            let t = Recording {
                inner: custom_trainer::SoftmaxTrainer::digits_shard(i, 3).unwrap(),
                offers: i < offering,
                first_fits: first_fits.clone(),
                given: given.clone(),
            };
            spawn_client(ClientConfig::with_trainer(
                url,
                format!("trainer-{i}"),
                Arc::new(t),
            ))
            .0
        })
        .collect();
    (stops, first_fits, given)
}

/// `init = "client"`, no tensors in the spec: one client that offers them is asked, once, and
/// round 1 starts from its parameters; clients that do not list the task kind are never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_starts_from_one_clients_parameters() {
    let tc = TestCoordinator::start().await;
    let (stops, first_fits, given) = recording_trainers(&tc.url, 2);
    tc.wait_clients(3).await;
    let mut jobs = tc.jobs().await;
    let job = external_job(3).replace(
        "tensors = [\n  { name = \"weight\", shape = [64, 10] },\n  { name = \"bias\", shape = [10] },\n]\ninit = \"zeros\"",
        "init = \"client\"",
    );
    assert!(job.contains("init = \"client\"") && !job.contains("tensors = ["));
    let id = submit(&mut jobs, &job).await;
    let (info, rounds) = finish(&mut jobs, &id, 120).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert!(rounds.iter().all(|r| r.clients == 3 && r.rejected == 0));
    let given = given.lock().unwrap().clone();
    assert_eq!(given.len(), 1, "exactly one client is asked");
    let fits = first_fits.lock().unwrap().clone();
    assert_eq!(fits.len(), 3);
    assert!(
        fits.iter().all(|w| w == &given[0]),
        "round 1 starts from the client's parameters"
    );
    assert_eq!(
        given[0].names(),
        vec!["weight", "bias"],
        "the client named the tensors"
    );
    assert!(
        tc.coord.store().initial(&id).unwrap().is_some(),
        "kept for a resume"
    );
    for s in stops {
        s.cancel();
    }
    tc.stop().await;
}

/// `init = "client"` with no client offering parameters fails the job saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_clients_offer_no_parameters_says_so() {
    let tc = TestCoordinator::start().await;
    let (stops, _, given) = recording_trainers(&tc.url, 0);
    tc.wait_clients(3).await;
    let mut jobs = tc.jobs().await;
    let job = external_job(2).replace("init = \"zeros\"", "init = \"client\"");
    let id = submit(&mut jobs, &job).await;
    let (info, _) = finish(&mut jobs, &id, 60).await;
    assert_eq!(info.status, v1::JobStatus::Failed as i32);
    assert!(
        info.error.contains("none of the clients") && info.error.contains("get_parameters"),
        "{}",
        info.error
    );
    assert!(given.lock().unwrap().is_empty());
    for s in stops {
        s.cancel();
    }
    tc.stop().await;
}

/// `init = "file"`: the submitting tool sends the file's tensors with the spec; they are put in
/// the spec's order and round 1 starts from them. A submission without them is refused, and the
/// coordinator never opens the path a remote spec names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_starts_from_the_tensors_of_its_init_file() {
    let tc = TestCoordinator::start().await;
    let (stops, first_fits, given) = recording_trainers(&tc.url, 3);
    tc.wait_clients(3).await;
    let mut jobs = tc.jobs().await;
    let job = external_job(2).replace(
        "init = \"zeros\"",
        "init = \"file\"\ninit_file = \"/etc/shadow\"",
    );
    let refused = jobs
        .submit(v1::SubmitRequest {
            spec: job.clone(),
            format: "toml".into(),
            initial_parameters: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("carries no initial parameters"),
        "{}",
        refused.message()
    );
    // As a safetensors file holds them: sorted by name, bias first.
    let file = Weights::new(vec![
        shoal_shared::tensor::Tensor::new("bias", vec![10], vec![0.5; 10]).unwrap(),
        shoal_shared::tensor::Tensor::new("weight", vec![64, 10], vec![0.01; 640]).unwrap(),
    ]);
    let wrong = Weights::new(vec![file.tensors[0].clone()]);
    let refused = jobs
        .submit(v1::SubmitRequest {
            spec: job.clone(),
            format: "toml".into(),
            initial_parameters: Some(shoal_proto::weights_to_wire(&wrong)),
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("has no tensor `weight`"),
        "{}",
        refused.message()
    );
    let id = jobs
        .submit(v1::SubmitRequest {
            spec: job,
            format: "toml".into(),
            initial_parameters: Some(shoal_proto::weights_to_wire(&file)),
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let (info, _) = finish(&mut jobs, &id, 120).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert!(given.lock().unwrap().is_empty(), "no client is asked");
    let fits = first_fits.lock().unwrap().clone();
    assert_eq!(fits.len(), 3);
    for w in fits.iter() {
        assert_eq!(w.names(), vec!["weight", "bias"], "in the spec's order");
        assert_eq!(w.get("bias").unwrap(), file.get("bias").unwrap());
        assert_eq!(w.get("weight").unwrap(), file.get("weight").unwrap());
    }
    for s in stops {
        s.cancel();
    }
    tc.stop().await;
}
