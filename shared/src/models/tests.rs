//! The boundary driven with no network: server halves and client halves talk through plain
//! values, the way the coordinator's round engine and the client's executor drive them over gRPC.

use super::phase::{
    Answer, ClientState, ClientTask, PhaseTally, Rejection, Reply, Request, RoundPlan, RoundResult,
    Step, TaskData, Work,
};
use super::sgd::LocalConfig;
use super::{ModelSpec, Server, ServerSetup};
use crate::data::builtin::Builtin;
use crate::data::partition::Partitioner;
use crate::data::Dataset;
use crate::strategy::StrategySpec;

/// A client: its name, rows (train and test alike, for brevity) and per-job state.
struct Peer {
    name: String,
    rows: Dataset,
    state: ClientState,
}

fn peers(dataset: Builtin, n: usize) -> (Vec<Peer>, Vec<String>) {
    let shards = dataset.shards(&Partitioner::Iid, n, 42).unwrap();
    let classes = dataset.holdout().unwrap().class_names;
    let peers = shards
        .into_iter()
        .enumerate()
        .map(|(i, rows)| Peer {
            name: format!("client-{i}"),
            rows,
            state: ClientState::default(),
        })
        .collect();
    (peers, classes)
}

fn setup(n_features: usize, n_classes: usize, strategy: &str) -> ServerSetup {
    ServerSetup {
        n_features,
        n_classes,
        init_seed: 1,
        max_params: usize::MAX,
        strategy: StrategySpec::from_name(strategy).unwrap(),
        bound: None,
        influence: Default::default(),
        initial: None,
        spool: Default::default(),
    }
}

/// Runs round `round`: every phase goes to its clients, whose replies reach the server half in
/// reverse name order when `reverse` (arrival order must not matter).
fn drive_round(
    spec: &ModelSpec,
    server: &mut Server,
    peers: &mut [Peer],
    classes: &[String],
    round: u32,
    reverse: bool,
) -> RoundResult {
    let names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
    let plan = RoundPlan {
        round,
        selected: names.clone(),
        available: names.clone(),
        quorum: names.len(),
        min_clients: names.len(),
        target: None,
        n_available: names.len(),
        announced: peers.iter().map(|p| p.rows.n_rows() as u64).collect(),
    };
    let mut step = server.begin_round(plan).unwrap();
    loop {
        let ask = match step {
            Step::Done(result) => return result,
            Step::Ask(ask) => ask,
        };
        let mut replies = Vec::new();
        for peer in peers.iter_mut().filter(|p| ask.clients.contains(&p.name)) {
            let work = match &ask.request {
                Request::Fit { control } => Work::Fit {
                    local: LocalConfig {
                        epochs: 1,
                        ..LocalConfig::default()
                    },
                    control: control.clone(),
                },
                Request::Sketch => Work::Sketch,
                Request::Histogram(h) => Work::Histogram(h.clone()),
            };
            let task = ClientTask {
                job: "job".into(),
                round: ask.round,
                seed: 7 + u64::from(round),
                n_classes: classes.len(),
                payload: ask.payload.clone(),
                work,
            };
            let data = TaskData {
                raw_train: &peer.rows,
                raw_test: &peer.rows,
                class_names: classes,
                view: None,
            };
            let (answer, kept) = spec.handle(task, &data, &peer.state).unwrap();
            if let Some(kept) = kept {
                peer.state = kept;
            }
            let Answer::Reply(reply) = answer else {
                panic!("a training phase was answered with an evaluation")
            };
            replies.push((peer.name.clone(), reply, peer.rows.n_rows() as u64));
        }
        if reverse {
            replies.reverse();
        }
        let mut tally = PhaseTally::default();
        for (name, reply, announced) in replies {
            server.accept(&name, reply, Some(announced)).unwrap();
            tally.accepted += 1;
        }
        step = server.close(tally).unwrap();
    }
}

fn run(spec: &ModelSpec, strategy: &str, dataset: Builtin, rounds: u32, reverse: bool) -> Server {
    let (mut peers, classes) = peers(dataset, 3);
    let n_features = peers[0].rows.n_features();
    let mut server = spec
        .server(&setup(n_features, classes.len(), strategy))
        .unwrap();
    for round in 1..=rounds {
        let r = drive_round(spec, &mut server, &mut peers, &classes, round, reverse);
        assert_eq!(r.accepted, 3);
        assert!(r.train_loss.is_finite(), "round {round}: {}", r.train_loss);
    }
    server
}

#[test]
fn boosting_through_the_boundary_equals_centralized_training() {
    let params = super::gbdt::GbdtParams {
        max_depth: 3,
        max_bins: 32,
        ..Default::default()
    };
    let spec = ModelSpec::Gbdt(params.clone());
    let server = run(&spec, "fedavg", Builtin::Iris, 3, false);
    let federated: super::gbdt::Ensemble =
        serde_json::from_value(server.to_json()["gbdt"].clone()).unwrap();
    assert_eq!(federated.rounds.len(), 3);
    // The same rows pooled, grown centrally from the same bin edges: the same model.
    let (peers, classes) = peers(Builtin::Iris, 3);
    let mut pooled = peers[0].rows.remap_classes(&classes).unwrap();
    for p in &peers[1..] {
        let rows = p.rows.remap_classes(&classes).unwrap();
        let x = ndarray::concatenate(
            ndarray::Axis(0),
            &[pooled.features.view(), rows.features.view()],
        )
        .unwrap();
        let mut y = pooled.labels.clone();
        y.extend(&rows.labels);
        pooled = Dataset::new(x, y, pooled.feature_names.clone(), classes.clone()).unwrap();
    }
    let central = super::gbdt::train_centralized(&pooled, &federated.edges, &params, 3).unwrap();
    let a = federated.raw_scores(pooled.features.view()).unwrap();
    let b = central.raw_scores(pooled.features.view()).unwrap();
    let worst = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1e-12))
        .fold(0.0f64, f64::max);
    assert!(worst <= 1e-6, "largest relative difference {worst}");
}

#[test]
fn every_kind_gives_the_same_model_whatever_order_replies_arrive_in() {
    for (spec, strategy, dataset) in [
        (ModelSpec::default(), "fedavg", Builtin::Iris),
        (
            ModelSpec::Mlp(super::sgd::MlpSpec { hidden: vec![8] }),
            "scaffold",
            Builtin::Iris,
        ),
        (ModelSpec::default(), "fedmedian", Builtin::Iris),
        (
            ModelSpec::Forest(Default::default()),
            "fedavg",
            Builtin::SeedFl,
        ),
        (
            ModelSpec::Gbdt(Default::default()),
            "fedavg",
            Builtin::SeedFl,
        ),
    ] {
        let a = run(&spec, strategy, dataset, 2, false);
        let b = run(&spec, strategy, dataset, 2, true);
        assert_eq!(a.to_json(), b.to_json(), "{} with {strategy}", spec.label());
        assert_eq!(a.checkpoint().unwrap(), b.checkpoint().unwrap());
        // A checkpoint restores into a fresh server half and gives the same model back.
        let (peers, classes) = peers(dataset, 3);
        let mut fresh = spec
            .server(&setup(peers[0].rows.n_features(), classes.len(), strategy))
            .unwrap();
        fresh.restore(&a.checkpoint().unwrap()).unwrap();
        assert_eq!(fresh.to_json(), a.to_json());
    }
}

/// A weights model's checkpoint is a safetensors file any reader opens: the global tensors under
/// `global/`, the strategy's state beside them, the spec in the metadata. The JSON checkpoints
/// Shoal wrote before still restore.
#[test]
fn weights_checkpoints_are_safetensors_and_old_json_ones_still_restore() {
    let spec = ModelSpec::Mlp(super::sgd::MlpSpec { hidden: vec![8] });
    let a = run(&spec, "fedadam", Builtin::Iris, 2, false);
    let bytes = a.checkpoint().unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let global = a.weights().unwrap();
    for t in &global.tensors {
        let view = file.tensor(&format!("global/{}", t.name)).unwrap();
        assert_eq!(view.shape(), t.shape.as_slice());
        let first = f32::from_le_bytes(view.data()[..4].try_into().unwrap());
        assert_eq!(first, t.data[0]);
        // FedAdam's moments travel too.
        assert!(file.tensor(&format!("m/{}", t.name)).is_ok());
        assert!(file.tensor(&format!("v/{}", t.name)).is_ok());
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let md: serde_json::Value =
        serde_json::from_str(&meta.metadata().clone().unwrap()["shoal"]).unwrap();
    assert_eq!(md["kind"], "params");
    assert_eq!(md["strategy"]["name"], "fedadam");

    let fresh = || {
        let (peers, classes) = peers(Builtin::Iris, 3);
        spec.server(&setup(peers[0].rows.n_features(), classes.len(), "fedadam"))
            .unwrap()
    };
    let mut back = fresh();
    back.restore(&bytes).unwrap();
    assert!(
        back.checkpoint().unwrap() == bytes,
        "restored and written again: other bytes"
    );

    // What a store written before binary checkpoints holds for the same model.
    let old = serde_json::json!({
        "kind": "params",
        "weights": global,
        "strategy": { "spec": md["strategy"], "state": fresh_state(&file, global) },
    });
    let mut from_json = fresh();
    from_json
        .restore(serde_json::to_string(&old).unwrap().as_bytes())
        .unwrap();
    assert!(
        from_json.checkpoint().unwrap() == bytes,
        "the JSON checkpoint restored otherwise"
    );

    // Another kind's checkpoint, or bytes that are neither, are refused with why.
    let mut other = fresh();
    let e = other
        .restore(b"\x07\x00\x00\x00\x00\x00\x00\x00{}")
        .unwrap_err();
    assert!(e.to_string().contains("cannot be restored"), "{e}");
    let forest = run(
        &ModelSpec::Forest(Default::default()),
        "fedavg",
        Builtin::SeedFl,
        2,
        false,
    );
    let e = other.restore(&forest.checkpoint().unwrap()).unwrap_err();
    assert!(e.to_string().contains("another kind of model"), "{e}");
}

/// The strategy state a safetensors checkpoint holds, as the JSON checkpoints kept it.
fn fresh_state(
    file: &safetensors::SafeTensors<'_>,
    layout: &crate::tensor::Weights,
) -> crate::strategy::StrategyState {
    let group = |g| crate::tensor::safetensors_group(file, g, layout).unwrap();
    crate::strategy::StrategyState {
        momentum: group("momentum"),
        m: group("m"),
        v: group("v"),
        control: group("control"),
    }
}

#[test]
fn bad_replies_are_refused_with_a_typed_reason_and_change_nothing() {
    let (peers, classes) = peers(Builtin::Iris, 3);
    let spec = ModelSpec::default();
    let mut server = spec.server(&setup(4, classes.len(), "fedavg")).unwrap();
    let names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
    let plan = RoundPlan {
        round: 1,
        selected: names.clone(),
        available: names,
        quorum: 1,
        min_clients: 1,
        target: None,
        n_available: 3,
        announced: peers.iter().map(|p| p.rows.n_rows() as u64).collect(),
    };
    let Step::Ask(ask) = server.begin_round(plan).unwrap() else {
        panic!("a round starts with a phase")
    };
    let super::phase::Payload::Weights(global) = ask.payload.clone() else {
        panic!("a weights model sends its weights")
    };
    let global = crate::tensor::Weights::clone(&global);
    let fit = |parameters, num_examples, train_loss| {
        Reply::Fit(super::phase::FitReply {
            num_examples,
            train_loss,
            parameters,
            control_delta: None,
            trees: None,
        })
    };
    let mut nan = global.clone();
    nan.values_mut().for_each(|v| *v = f32::NAN);
    let cases: Vec<(Reply, &str)> = vec![
        (
            Reply::Sketch(super::phase::SketchReply {
                sketch: super::gbdt::QuantileSketch::empty(0),
                num_examples: 1,
            }),
            "expected a fit result",
        ),
        (fit(None, 10, 0.5), "fit result without parameters"),
        (fit(Some(nan), 10, 0.5), "non-finite"),
        (
            fit(Some(global.clone()), 1_000, 0.5),
            "reports 1000 train examples; it announced 50 in its Hello",
        ),
        (
            fit(Some(global.clone()), 10, f64::NAN),
            "implausible train_loss NaN",
        ),
    ];
    for (reply, says) in cases {
        let e: Rejection = server.accept("client-0", reply, Some(50)).unwrap_err();
        assert!(e.to_string().contains(says), "{e} (expected: {says})");
    }
    // Nothing was kept: with no valid update the round ends below its quorum, model unchanged.
    let before = server.to_json();
    let Step::Done(r) = server.close(PhaseTally::default()).unwrap() else {
        panic!("one phase per round")
    };
    assert_eq!(r.accepted, 0);
    assert!(r.train_loss.is_nan());
    assert_eq!(server.to_json(), before);
}

#[test]
fn capabilities_parse_and_decide_what_a_client_is_sent() {
    use super::phase::{Capabilities, TaskKind};
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let caps = Capabilities::parse(&s(&["external"]), &s(&["fit", "evaluate"])).unwrap();
    assert!(caps.runs("external", &[TaskKind::Fit]));
    assert!(caps.runs("external", &[TaskKind::Evaluate]));
    assert!(!caps.runs("gbdt", &[TaskKind::Sketch, TaskKind::Histogram]));
    assert!(!caps.runs("external", &[TaskKind::Sketch]));
    // Repeats are one entry: five names that cover the four task kinds are accepted.
    let tasks = s(&["fit", "evaluate", "sketch", "histogram", "fit"]);
    assert_eq!(
        Capabilities::parse(&s(&["gbdt"]), &tasks)
            .unwrap()
            .task_kinds
            .len(),
        4
    );
    let builtin = Capabilities::builtin();
    assert!(builtin.runs("gbdt", &[TaskKind::Sketch, TaskKind::Histogram]));
    assert!(!builtin.model_kinds.contains("external"));
    for (models, tasks, says) in [
        (s(&[]), s(&["fit"]), "Hello.model_kinds"),
        (s(&["Logreg"]), s(&["fit"]), "`Logreg` is not a model kind"),
        (s(&["logreg"]), s(&[]), "Hello.task_kinds"),
        (
            s(&["logreg"]),
            s(&["fit", "train"]),
            "`train` is not a task kind",
        ),
        (
            vec!["x\n".repeat(40)],
            s(&["fit"]),
            "a name of 80 bytes that is not a kind",
        ),
    ] {
        let err = Capabilities::parse(&models, &tasks)
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{err}");
    }
}

/// One round of a logreg server with `influence`: each reply moves the first weight of the
/// global model by `distance` and reports `examples` and `loss`. Returns the round and how far
/// the first weight moved.
fn influenced_round(
    influence: super::phase::Influence,
    replies: &[(&str, f32, u64, f64)],
) -> (RoundResult, f64) {
    let announced = replies.iter().map(|r| r.2).collect();
    let (r, first, next) = influenced_weights(influence, replies, announced);
    let moved = f64::from(next.values().next().unwrap()) - f64::from(first);
    (r, moved)
}

/// [`influenced_round`]'s round with the announced counts given, the replies arriving in the
/// order given; returns the first global weight before and the next model.
fn influenced_weights(
    influence: super::phase::Influence,
    replies: &[(&str, f32, u64, f64)],
    announced: Vec<u64>,
) -> (RoundResult, f32, crate::tensor::Weights) {
    use super::phase::{FitReply, Payload};
    let spec = ModelSpec::default();
    let mut s = setup(4, 3, "fedavg");
    s.influence = influence;
    let mut server = spec.server(&s).unwrap();
    let names: Vec<String> = replies.iter().map(|r| r.0.to_string()).collect();
    let plan = RoundPlan {
        round: 1,
        selected: names.clone(),
        available: names.clone(),
        quorum: 3,
        min_clients: 3,
        target: None,
        n_available: names.len(),
        announced,
    };
    let Step::Ask(ask) = server.begin_round(plan).unwrap() else {
        panic!("a weights model asks for updates")
    };
    let Payload::Weights(global) = ask.payload else {
        panic!("the global weights go out")
    };
    let first = global.values().next().unwrap();
    for &(name, distance, examples, loss) in replies {
        let mut w = (*global).clone();
        *w.values_mut().next().unwrap() += distance;
        let reply = Reply::Fit(FitReply {
            num_examples: examples,
            train_loss: loss,
            parameters: Some(w),
            control_delta: None,
            trees: None,
        });
        server.accept(name, reply, Some(u64::MAX)).unwrap();
    }
    let tally = PhaseTally {
        accepted: replies.len(),
        ..PhaseTally::default()
    };
    let Step::Done(r) = server.close(tally).unwrap() else {
        panic!("one phase per round")
    };
    let Payload::Weights(next) = server.payload() else {
        panic!("weights")
    };
    (r, first, (*next).clone())
}

/// The limits correct summed updates exactly: whatever order the replies come in, including
/// one out of the grid's range until the clip brings it back, the next model has the same bits.
#[test]
fn limited_rounds_give_the_same_bits_in_any_arrival_order() {
    let influence = super::phase::Influence {
        weight_cap: Some(3.0),
        adaptive_norm: Some(3.0),
        refuse_norm: Some(5000.0),
    };
    let replies = [
        ("a", 1.0, 100, 1.0),
        ("b", 0.5, 80, 1.0),
        ("c", 1.5, 120, 1.0),
        ("d", 12.0, 1000, 100.0),
        // 2000 units off: beyond the grid's range (1024) until scaled back to 3 x the median.
        ("e", 2000.0, 90, 1.0),
    ];
    let announced: Vec<u64> = replies.iter().map(|r| r.2).collect();
    let (r, _, forward) = influenced_weights(influence, &replies, announced.clone());
    assert_eq!((r.accepted, r.refused.len()), (5, 0), "{:?}", r.refused);
    let bits = |w: &crate::tensor::Weights| w.values().map(f32::to_bits).collect::<Vec<_>>();
    for order in [[4, 3, 2, 1, 0], [2, 4, 0, 3, 1], [3, 0, 4, 1, 2]] {
        let shuffled: Vec<_> = order.iter().map(|&i| replies[i]).collect();
        let ann: Vec<u64> = order.iter().map(|&i| announced[i]).collect();
        let (_, _, next) = influenced_weights(influence, &shuffled, ann);
        assert_eq!(bits(&next), bits(&forward), "{order:?}");
    }
}

/// Counts that outgrow what the round's sums were sized for (announcements far below the
/// replies) are summed again from the spool: the same model as sums sized right, to f32.
#[test]
fn a_round_whose_counts_outgrow_its_sums_is_summed_again() {
    let influence = super::phase::Influence {
        weight_cap: Some(3.0),
        ..Default::default()
    };
    let replies = [
        ("a", 1.0, 100, 1.0),
        ("b", 0.5, 80, 1.0),
        ("c", 1.5, 120, 1.0),
    ];
    let (_, first, right) = influenced_weights(influence, &replies, vec![100, 80, 120]);
    let (r, _, small) = influenced_weights(influence, &replies, vec![1, 1, 1]);
    assert_eq!(r.accepted, 3);
    for (a, b) in right.values().zip(small.values()) {
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
    }
    // (100 x 1 + 80 x 0.5 + 120 x 1.5) / 300 = 1.066..
    let moved = f64::from(right.values().next().unwrap()) - f64::from(first);
    assert!((moved - 320.0 / 300.0).abs() < 1e-5, "{moved}");
}

#[test]
fn influence_limits_follow_the_rounds_medians() {
    // Three honest updates one unit away, a liar about its size 12 units away (four times
    // farther than the clip allows), and one far beyond the refusal bound.
    let (r, moved) = influenced_round(
        super::phase::Influence {
            weight_cap: Some(3.0),
            adaptive_norm: Some(3.0),
            refuse_norm: Some(20.0),
        },
        &[
            ("a", 1.0, 100, 1.0),
            ("b", 1.0, 100, 1.0),
            ("c", 1.0, 100, 1.0),
            ("d", 12.0, u64::MAX, 100.0),
            ("e", 1000.0, 100, 1.0),
        ],
    );
    assert_eq!(r.accepted, 4);
    assert_eq!(r.refused.len(), 1);
    assert_eq!(r.refused[0].0, "e");
    assert!(
        r.refused[0].1.contains("updates.adaptive_refuse"),
        "{:?}",
        r.refused
    );
    // `d` counts 300 examples (3 x the median 100) and moved 3 units (3 x the median distance 1):
    // the first weight moves (3 x 100 x 1 + 300 x 3) / 600 = 2 units; the loss is weighted alike.
    assert!((moved - 2.0).abs() < 1e-5, "moved {moved}");
    assert!((r.train_loss - 50.5).abs() < 1e-9, "loss {}", r.train_loss);
}

#[test]
fn the_refusal_bound_holds_without_the_clip() {
    let (r, _) = influenced_round(
        super::phase::Influence {
            refuse_norm: Some(20.0),
            ..Default::default()
        },
        &[
            ("a", 1.0, 100, 1.0),
            ("b", 1.0, 100, 1.0),
            ("c", 1.0, 100, 1.0),
            ("e", 1000.0, 100, 1.0),
        ],
    );
    assert_eq!((r.accepted, r.refused.len()), (3, 1), "{:?}", r.refused);
}

#[test]
fn the_lower_median_lets_the_honest_half_set_the_scale() {
    use super::phase::{capped_count, lower_median};
    assert_eq!(lower_median(&[]), None);
    assert_eq!(lower_median(&[5.0]), Some(5.0));
    assert_eq!(lower_median(&[1.0, 1e38]), Some(1.0));
    assert_eq!(lower_median(&[3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(capped_count(u64::MAX, Some(300.0)), 300);
    assert_eq!(capped_count(7, Some(0.0)), 1);
    assert_eq!(capped_count(7, None), 7);
}
