//! Model kinds trained over the federation: weights models, sampling and evaluation, forests, boosting.

use super::*;

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
        &digits_job(
            5,
            3,
            "[local]\nepochs = 1\nlr = 0.05\nmomentum = 0.0\n[evaluation]\npersonalize_epochs = 2\n",
        ),
    )
    .await;
    let (info, rounds) = finish(&mut jobs, &id, 60).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert_eq!(rounds.len(), 5);
    let acc: Vec<f64> = rounds.iter().map(|r| r.test_accuracy.unwrap()).collect();
    assert!(acc[4] > acc[0], "test accuracy per round: {acc:?}");
    assert!(acc[4] > 0.85, "final test accuracy {}", acc[4]);
    assert!(rounds
        .iter()
        .all(|r| r.clients == 3 && r.fed_accuracy.is_some()));
    assert!(rounds.iter().all(|r| r.bytes_up > 0 && r.bytes_down > 0));

    // The run folder holds the documented files.
    let dir = std::path::Path::new(&info.run_dir);
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(
        csv.lines().next().unwrap(),
        "round,clients,train_loss,fed_loss,fed_accuracy,test_accuracy,bytes_up,bytes_down,seconds"
    );
    assert_eq!(csv.lines().count(), 6);
    for f in [
        "metrics.jsonl",
        "spec.toml",
        "model.json",
        "summary.json",
        "accuracy.svg",
        "loss.svg",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    // The final tensors in safetensors; model.json names the file and lists their shapes.
    let st = std::fs::read(dir.join("model.safetensors")).unwrap();
    let from_st = shoal_shared::tensor::Weights::from_safetensors(&st, usize::MAX).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap()).unwrap();
    let listed = &json["global"]["weights"];
    assert_eq!(listed["file"], "model.safetensors");
    // (A safetensors file keeps its tensors in name order.)
    let listed: std::collections::BTreeSet<(String, Vec<usize>)> = listed["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                serde_json::from_value(t["shape"].clone()).unwrap(),
            )
        })
        .collect();
    let stored: std::collections::BTreeSet<(String, Vec<usize>)> = from_st
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    assert_eq!(listed, stored);
    assert!(from_st.num_params() > 0);
    // The report: charts inline, the rounds, the clients, the spec.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    for needle in [
        "id=\"accuracy-chart\"><svg",
        "id=\"loss-chart\"><svg",
        "<table id=\"summary\">",
        "<table id=\"rounds\">",
        "<table id=\"clients\">",
        "<pre id=\"spec\">",
    ] {
        assert!(html.contains(needle), "report.html lacks {needle}");
    }
    assert_eq!(
        html.matches("<tr><td>").count(),
        5 + 3,
        "5 round rows and 3 client rows"
    );
    // The per-client table: every client scored the final model, before and after personalising.
    let table = std::fs::read_to_string(dir.join("clients.csv")).unwrap();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    for r in &rows {
        let acc: f64 = r[3].parse().unwrap();
        let personal: f64 = r[4].parse().unwrap();
        assert!(acc > 0.5 && personal > 0.5, "{table}");
        assert_eq!(r[2], "10", "IID shards hold every class: {table}");
    }
    for (stop, handle) in clients {
        stop.cancel();
        handle.await.unwrap().unwrap();
    }
    tc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraction_fit_samples_clients_and_evaluation_runs_every_k_rounds() {
    let tc = TestCoordinator::start().await;
    let clients: Vec<_> = (0..4)
        .map(|i| start_client(&tc.url, Builtin::Iris, Partitioner::Iid, i, 4))
        .collect();
    tc.wait_clients(4).await;
    let mut jobs = tc.jobs().await;
    let id = submit(
        &mut jobs,
        "kind = \"train\"\ndataset = \"iris\"\nrounds = 3\n[clients]\nfraction_fit = 0.5\nmin_fit_clients = 2\n\
         min_available_clients = 4\nfraction_evaluate = 0.5\n[evaluation]\nevery = 2\n",
    )
    .await;
    let (info, rounds) = finish(&mut jobs, &id, 60).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert!(rounds
        .iter()
        .all(|r| r.clients_selected == 2 && r.clients == 2));
    // Round 1 is not a multiple of 2; round 3 is the last and always evaluated.
    let evaluated: Vec<bool> = rounds.iter().map(|r| r.fed_accuracy.is_some()).collect();
    assert_eq!(evaluated, vec![false, true, true]);
    assert!(rounds.iter().all(|r| r.test_accuracy.is_some()));
    for (stop, _) in clients {
        stop.cancel();
    }
    tc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_forest_pools_every_clients_trees() {
    let tc = TestCoordinator::start().await;
    let clients: Vec<_> = (0..3)
        .map(|i| start_client(&tc.url, Builtin::Iris, Partitioner::Iid, i, 3))
        .collect();
    tc.wait_clients(3).await;
    let mut jobs = tc.jobs().await;
    let id = submit(
        &mut jobs,
        "kind = \"train\"\ndataset = \"iris\"\nrounds = 3\n[clients]\nmin_available_clients = 3\n\
         [model]\nkind = \"forest\"\ntrees_per_round = 4\nmax_trees = 30\n",
    )
    .await;
    let (info, rounds) = finish(&mut jobs, &id, 60).await;
    assert_eq!(
        info.status,
        v1::JobStatus::Finished as i32,
        "{}",
        info.error
    );
    assert_eq!(rounds.len(), 3);
    let last = rounds.last().unwrap();
    assert!(
        last.test_accuracy.unwrap() > 0.8 && last.fed_accuracy.unwrap() > 0.8,
        "{last:?}"
    );
    // 3 rounds x 3 clients x 4 trees = 36, capped at 30 by dropping the oldest round's.
    let model: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(&info.run_dir).join("model.json")).unwrap(),
    )
    .unwrap();
    let trees = model["global"]["forest"]["trees"].as_array().unwrap();
    assert_eq!(trees.len(), 30);
    assert_eq!(trees.iter().filter(|t| t["round"] == 1).count(), 6);
    for (stop, _) in clients {
        stop.cancel();
    }
    tc.stop().await;
}

/// Runs a gbdt job over `clients` in-process clients (IID shards) and checks that its model equals
/// the same algorithm run centrally on the pooled client train rows with the same bin edges.
async fn gbdt_lossless(dataset: Builtin, clients: usize, rounds: u32) {
    use shoal_coordinator::simulate::SimulateOptions;
    use shoal_shared::models::gbdt::{train_centralized, Ensemble, GbdtParams};
    let toml = format!(
        "kind = \"train\"\ndataset = \"{dataset}\"\nrounds = {rounds}\n[model]\nkind = \"gbdt\"\nmax_depth = 3\nmax_bins = 32\n"
    );
    let spec = shoal_coordinator::spec::CheckedSpec::from_toml(&toml)
        .unwrap()
        .into_spec();
    let params: GbdtParams = spec.model.gbdt().unwrap().clone();
    let mut o = SimulateOptions::new(spec, dataset);
    o.clients = clients;
    o.scheme = Partitioner::Iid;
    let run = crate::util::simulate_finished(o, "").await;
    let outcome = &run.outcome;
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(&outcome.job.run_dir).join("model.json"))
            .unwrap(),
    )
    .unwrap();
    let federated: Ensemble = serde_json::from_value(saved["global"]["gbdt"].clone()).unwrap();
    assert_eq!(federated.rounds.len(), rounds as usize);

    // The clients' train rows, exactly as each client derived them, pooled.
    let holdout = dataset.holdout().unwrap();
    let mut parts = Vec::new();
    for i in 0..clients {
        let mut c = shoal_client::Catalog::new();
        c.add_builtin(dataset, &Partitioner::Iid, i, clients, 42)
            .unwrap();
        parts.push(
            c.get(dataset.name())
                .unwrap()
                .train
                .remap_classes(&holdout.class_names)
                .unwrap(),
        );
    }
    let views: Vec<_> = parts.iter().map(|p| p.features.view()).collect();
    let pooled = shoal_shared::data::Dataset::new(
        ndarray::concatenate(ndarray::Axis(0), &views).unwrap(),
        parts.iter().flat_map(|p| p.labels.clone()).collect(),
        holdout.feature_names.clone(),
        holdout.class_names.clone(),
    )
    .unwrap();
    let central = train_centralized(&pooled, &federated.edges, &params, rounds).unwrap();
    let a = federated.raw_scores(holdout.features.view()).unwrap();
    let b = central.raw_scores(holdout.features.view()).unwrap();
    let worst = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1e-12))
        .fold(0.0f64, f64::max);
    assert!(
        worst <= 1e-6,
        "{dataset} x {clients} clients: largest relative difference {worst}"
    );
    let acc = federated.evaluate(&holdout).unwrap().accuracy;
    assert!(acc > 0.7, "{dataset}: accuracy {acc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gbdt_is_lossless_binary_and_multiclass_with_3_and_10_clients() {
    gbdt_lossless(Builtin::SeedFl, 3, 4).await;
    gbdt_lossless(Builtin::SeedFl, 10, 4).await;
    gbdt_lossless(Builtin::Iris, 3, 4).await;
    gbdt_lossless(Builtin::Digits, 10, 3).await;
}
