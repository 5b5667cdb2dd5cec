//! Strategy-level tests: each server step computed by hand, driven through the public API
//! (`build` → `aggregator` → `add` → `finish`) the way the coordinator drives it.

use super::*;
use crate::tensor::Tensor;

/// Room for the few small counts these tests add.
const BUDGET: CountBudget = CountBudget {
    total: 100,
    largest: 10,
};

fn w(vals: &[f32]) -> Weights {
    Weights::new(vec![
        Tensor::new("w", vec![vals.len()], vals.to_vec()).unwrap()
    ])
}

fn assert_close(got: &Weights, want: &[f64], tol: f64) {
    let got: Vec<f32> = got.values().collect();
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, e) in got.iter().zip(want) {
        assert!((f64::from(*g) - e).abs() < tol, "{got:?} vs {want:?}");
    }
}

/// One round: every `(weights, examples)` into a fresh aggregator, then `finish`.
fn round(
    s: &mut Strategy,
    r: u32,
    global: &Weights,
    updates: &[(&[f32], u64)],
    total: usize,
) -> Result<Weights> {
    let mut agg = s.aggregator(global, CountBudget::of(updates.iter().map(|u| u.1)));
    for (u, n) in updates {
        agg.add(&w(u), *n, None)?;
    }
    s.finish(r, global, agg, total)
}

#[test]
fn fedavg_is_the_weighted_mean() {
    let global = w(&[0.0, 0.0]);
    let mut s = StrategySpec::FedAvg.build();
    let out = round(
        &mut s,
        1,
        &global,
        &[(&[1.0, 2.0], 10), (&[4.0, -1.0], 30), (&[0.0, 0.0], 60)],
        3,
    )
    .unwrap();
    // (10*1 + 30*4 + 0)/100 = 1.3 ; (10*2 - 30)/100 = -0.1
    assert_close(&out, &[1.3, -0.1], 1e-6);
    assert_eq!(s.state, StrategyState::default());
}

/// FedProx's server side is FedAvg; its mu reaches the clients through `proximal_mu`.
#[test]
fn fedprox_aggregates_like_fedavg() {
    let spec = StrategySpec::from_name("fedprox").unwrap();
    assert_eq!(spec.proximal_mu(), 0.01);
    assert_eq!(StrategySpec::FedAvg.proximal_mu(), 0.0);
    let mut s = spec.build();
    let out = round(&mut s, 1, &w(&[9.0]), &[(&[1.0], 1), (&[3.0], 3)], 2).unwrap();
    assert_close(&out, &[2.5], 1e-6);
}

/// lr = 0.5, momentum = 0.5 over two rounds.
#[test]
fn fedavgm_carries_momentum() {
    let mut s = StrategySpec::FedAvgM {
        server_learning_rate: 0.5,
        server_momentum: 0.5,
    }
    .build();
    // Round 1: fedavg = (0, 2), pg = (1,2) - (0,2) = (1, 0), v = pg (first round) = (1, 0),
    // next = (1,2) - 0.5 * (1,0) = (0.5, 2).
    let g1 = round(&mut s, 1, &w(&[1.0, 2.0]), &[(&[0.0, 2.0], 4)], 1).unwrap();
    assert_close(&g1, &[0.5, 2.0], 1e-6);
    assert_close(s.state.momentum.as_ref().unwrap(), &[1.0, 0.0], 1e-6);
    // Round 2: fedavg = (0.5, 1), pg = (0, 1), v = 0.5 * (1,0) + (0,1) = (0.5, 1),
    // next = (0.5, 2) - 0.5 * (0.5, 1) = (0.25, 1.5). (Without momentum it would be (0.5, 1.5).)
    let g2 = round(&mut s, 2, &g1, &[(&[0.5, 1.0], 4)], 1).unwrap();
    assert_close(&g2, &[0.25, 1.5], 1e-6);
    assert_close(s.state.momentum.as_ref().unwrap(), &[0.5, 1.0], 1e-6);
}

/// eta = 0.1, tau = 1: delta = (2,2,1) - (1,2,3) = (1, 0, -2); m = delta; v = delta^2 = (1, 0, 4);
/// next = global + 0.1 * m / (sqrt(v) + 1) = (1 + 0.1/2, 2, 3 - 0.2/3) = (1.05, 2, 2.9333333).
#[test]
fn fedadagrad_one_step() {
    let mut s = StrategySpec::FedAdagrad {
        eta: 0.1,
        eta_l: Some(0.05),
        tau: 1.0,
    }
    .build();
    assert_eq!(s.spec.local_lr(), Some(0.05));
    let out = round(&mut s, 1, &w(&[1.0, 2.0, 3.0]), &[(&[2.0, 2.0, 1.0], 5)], 1).unwrap();
    assert_close(&out, &[1.05, 2.0, 2.0 + 2.8 / 3.0], 1e-6);
    assert_close(s.state.m.as_ref().unwrap(), &[1.0, 0.0, -2.0], 1e-6);
    assert_close(s.state.v.as_ref().unwrap(), &[1.0, 0.0, 4.0], 1e-6);
}

/// Two FedAdam steps (eta 0.1, beta_1 0.9, beta_2 0.99, tau 0.1), one client per round.
///
/// Round 1 from global (0, 1, 2), client (1, 1, 0): delta = (1, 0, -2).
///   m = 0.1 * delta = (0.1, 0, -0.2); v = 0.01 * delta^2 = (0.01, 0, 0.04).
///   eta_norm = 0.1 * sqrt(1 - 0.99^2) / (1 - 0.9^2) = 0.1 * 0.1410674 / 0.19 = 0.0742460
///   (exponent round + 1 = 2, as Flower).
///   m / (sqrt(v) + tau) = (0.1/0.2, 0/0.1, -0.2/0.3) = (0.5, 0, -0.6666667).
///   next = (0.0371230, 1, 1.9505027).
/// Round 2, client = next + (-1, 2, 0): delta = (-1, 2, 0).
///   m = 0.9 m + 0.1 delta = (0.09 - 0.1, 0.2, -0.18) = (-0.01, 0.2, -0.18)   (carry-over).
///   v = 0.99 v + 0.01 delta^2 = (0.0099 + 0.01, 0.04, 0.0396) = (0.0199, 0.04, 0.0396).
///   eta_norm = 0.1 * sqrt(1 - 0.99^3) / (1 - 0.9^3) = 0.1 * sqrt(0.029701) / 0.271 = 0.0635940.
///   m / (sqrt(v) + tau) = (-0.01/0.2410674, 0.2/0.3, -0.18/0.2989975)
///                       = (-0.0414822, 0.6666667, -0.6020118).
///   next = (0.0371230 - 0.0026380, 1 + 0.0423960, 1.9505027 - 0.0382843)
///        = (0.0344850, 1.0423960, 1.9122183).
#[test]
fn fedadam_two_steps() {
    let mut s = StrategySpec::FedAdam {
        eta: 0.1,
        eta_l: None,
        beta_1: 0.9,
        beta_2: 0.99,
        tau: 0.1,
    }
    .build();
    let g1 = round(&mut s, 1, &w(&[0.0, 1.0, 2.0]), &[(&[1.0, 1.0, 0.0], 3)], 1).unwrap();
    assert_close(&g1, &[0.0371230, 1.0, 1.9505027], 1e-6);
    assert_close(s.state.m.as_ref().unwrap(), &[0.1, 0.0, -0.2], 1e-7);
    assert_close(s.state.v.as_ref().unwrap(), &[0.01, 0.0, 0.04], 1e-7);

    let v1: Vec<f32> = g1.values().collect();
    let client = [v1[0] - 1.0, v1[1] + 2.0, v1[2]];
    let g2 = round(&mut s, 2, &g1, &[(&client, 3)], 1).unwrap();
    assert_close(&g2, &[0.0344850, 1.0423960, 1.9122183], 1e-6);
    assert_close(s.state.m.as_ref().unwrap(), &[-0.01, 0.2, -0.18], 1e-6);
    assert_close(s.state.v.as_ref().unwrap(), &[0.0199, 0.04, 0.0396], 1e-6);
}

/// FedYogi with its defaults (eta 0.01, beta_1 0.9, beta_2 0.99, tau 1e-3), from zero state.
/// delta = (2, 2.5, 1) - (1, 2, 3) = (1, 0.5, -2); m = 0.1 delta = (0.1, 0.05, -0.2);
/// v = 0 - 0.01 delta^2 sign(0 - delta^2) = 0.01 delta^2 = (0.01, 0.0025, 0.04);
/// next = global + 0.01 * m / (sqrt(v) + 1e-3)
///      = (1 + 0.001/0.101, 2 + 0.0005/0.051, 3 - 0.002/0.201) = (1.0099010, 2.0098039, 2.9900498).
/// (The sign rule from a non-zero v is checked in `opt.rs`.)
#[test]
fn fedyogi_one_step() {
    let mut s = StrategySpec::from_name("fedyogi").unwrap().build();
    let out = round(&mut s, 1, &w(&[1.0, 2.0, 3.0]), &[(&[2.0, 2.5, 1.0], 1)], 1).unwrap();
    assert_close(&out, &[1.0099010, 2.0098039, 2.9900498], 1e-6);
    assert_close(s.state.v.as_ref().unwrap(), &[0.01, 0.0025, 0.04], 1e-7);
}

/// The robust rules through the strategy: dispatch and MultiKrum's default `m = n - f`.
#[test]
fn robust_strategies_dispatch() {
    let global = w(&[0.0, 0.0]);
    let updates: &[(&[f32], u64)] = &[
        (&[11.0, 10.0], 3),
        (&[10.0, 10.0], 1),
        (&[60.0, 60.0], 1),
        (&[10.0, 12.0], 1),
    ];
    let mut median = StrategySpec::FedMedian.build();
    // Columns sorted: (10, 10, 11, 60) -> 10.5; (10, 10, 12, 60) -> 11.
    assert_close(
        &round(&mut median, 1, &global, updates, 4).unwrap(),
        &[10.5, 11.0],
        1e-6,
    );
    let mut trimmed = StrategySpec::from_name("fedtrimmedavg").unwrap().build();
    // beta 0.2 of 4 cuts floor(0.8) = 0: the unweighted mean (91/4, 92/4).
    assert_close(
        &round(&mut trimmed, 1, &global, updates, 4).unwrap(),
        &[22.75, 23.0],
        1e-6,
    );
    let mut krum = StrategySpec::from_name("krum").unwrap().build();
    // f = 0, k = 2: scores 6, 5, big, 9 (see robust.rs): index 1.
    assert_close(
        &round(&mut krum, 1, &global, updates, 4).unwrap(),
        &[10.0, 10.0],
        1e-6,
    );
    let mut multi = StrategySpec::MultiKrum {
        num_malicious_clients: 2,
        num_clients_to_keep: 0,
    }
    .build();
    // f = 2: m = n - f = 2, k = max(1, 0) = 1; scores 1, 1, big, 4: indices 0 and 1, weighted 3:1.
    assert_close(
        &round(&mut multi, 1, &global, updates, 4).unwrap(),
        &[10.75, 10.0],
        1e-6,
    );
    // A running mean cannot give a median.
    let mut agg = Aggregator::Mean(WeightedMean::new(&global, BUDGET, None));
    agg.add(&global, 1, None).unwrap();
    assert!(median.finish(2, &global, agg, 1).is_err());
}

/// SCAFFOLD, eta_g = 0.5, N = 4 clients available.
#[test]
fn scaffold_updates_weights_and_control() {
    let global = w(&[1.0, 1.0]);
    let mut s = StrategySpec::Scaffold {
        server_learning_rate: 0.5,
    }
    .build();
    assert!(s.spec.uses_control_variates());
    assert_eq!(s.server_control(&global), Some(w(&[0.0, 0.0])));
    assert_eq!(StrategySpec::FedAvg.build().server_control(&global), None);

    // Round 1, |S| = 2: y1 = (3, 1) x1 example, y2 = (1, 5) x3 examples;
    // fedavg = ((3 + 3)/4, (1 + 15)/4) = (1.5, 4); next = (1,1) + 0.5 * (0.5, 3) = (1.25, 2.5).
    // dc1 = (1, -2), dc2 = (3, 4): unweighted mean (2, 1); c = 0 + 2/4 * (2, 1) = (1, 0.5).
    let mut agg = s.aggregator(&global, BUDGET);
    agg.add(&w(&[3.0, 1.0]), 1, Some(&w(&[1.0, -2.0]))).unwrap();
    // Without a control delta the update is refused.
    assert!(agg.add(&w(&[3.0, 1.0]), 1, None).is_err());
    agg.add(&w(&[1.0, 5.0]), 3, Some(&w(&[3.0, 4.0]))).unwrap();
    let g1 = s.finish(1, &global, agg, 4).unwrap();
    assert_close(&g1, &[1.25, 2.5], 1e-6);
    assert_close(&s.server_control(&g1).unwrap(), &[1.0, 0.5], 1e-6);

    // Round 2, |S| = 1: dc = (2, 2); c = (1, 0.5) + 1/4 * (2, 2) = (1.5, 1).
    let mut agg = s.aggregator(&g1, BUDGET);
    agg.add(&w(&[1.25, 2.5]), 1, Some(&w(&[2.0, 2.0]))).unwrap();
    let g2 = s.finish(2, &g1, agg, 4).unwrap();
    assert_close(&g2, &[1.25, 2.5], 1e-6);
    assert_close(s.state.control.as_ref().unwrap(), &[1.5, 1.0], 1e-6);

    // |S| > N is clamped to 1: c = (1.5, 1) + 1 * (1, 1).
    let mut agg = s.aggregator(&g2, BUDGET);
    agg.add(&g2, 1, Some(&w(&[0.0, 0.0]))).unwrap();
    agg.add(&g2, 1, Some(&w(&[2.0, 2.0]))).unwrap();
    s.finish(3, &g2, agg, 1).unwrap();
    assert_close(s.state.control.as_ref().unwrap(), &[2.5, 2.0], 1e-6);

    // N = 0 is an error and changes nothing.
    let before = s.clone();
    let mut agg = s.aggregator(&g2, BUDGET);
    agg.add(&g2, 1, Some(&w(&[2.0, 2.0]))).unwrap();
    assert!(s.finish(4, &g2, agg, 0).is_err());
    assert_eq!(s, before);
}

/// An empty round is a data error for every strategy, and leaves the state alone.
#[test]
fn an_empty_round_is_an_error() {
    for name in StrategySpec::NAMES.split(", ") {
        let mut s = StrategySpec::from_name(name).unwrap().build();
        let global = w(&[1.0]);
        let agg = s.aggregator(&global, BUDGET);
        let err = s.finish(1, &global, agg, 3).unwrap_err();
        assert!(matches!(err, Error::Data(_)), "{name}: {err}");
        assert_eq!(s.state, StrategyState::default(), "{name}");
    }
}

/// Misshapen updates are refused by both aggregator kinds, leaving the aggregate unchanged.
#[test]
fn misshapen_updates_are_refused() {
    let global = w(&[0.0, 0.0]);
    for name in ["fedavg", "fedmedian"] {
        let mut s = StrategySpec::from_name(name).unwrap().build();
        let mut agg = s.aggregator(&global, BUDGET);
        agg.add(&w(&[2.0, 4.0]), 1, None).unwrap();
        assert!(agg.add(&w(&[1.0, 1.0, 1.0]), 5, None).is_err());
        assert!(agg.add(&w(&[1.0, 1.0]), 0, None).is_err());
        assert_eq!(agg.count(), 1);
        assert_close(&s.finish(1, &global, agg, 1).unwrap(), &[2.0, 4.0], 1e-12);
    }
    // State saved for another model is refused rather than misaligned.
    let mut s = StrategySpec::from_name("fedadam").unwrap().build();
    round(&mut s, 1, &w(&[0.0]), &[(&[1.0], 1)], 1).unwrap();
    let before = s.clone();
    assert!(round(&mut s, 2, &global, &[(&[1.0, 1.0], 1)], 1).is_err());
    assert_eq!(s, before);
}

#[test]
fn every_name_parses_and_round_trips() {
    let names: Vec<&str> = StrategySpec::NAMES.split(", ").collect();
    assert_eq!(names.len(), 11);
    for name in names {
        let spec = StrategySpec::from_name(name).unwrap();
        assert_eq!(spec.name(), name);
        spec.check().unwrap();
        // The serialised form carries the same name and parses back to the same spec.
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["name"], name);
        assert_eq!(serde_json::from_value::<StrategySpec>(json).unwrap(), spec);
    }
    assert_eq!(StrategySpec::default(), StrategySpec::FedAvg);
    let err = StrategySpec::from_name("fedsgd").unwrap_err().to_string();
    assert!(err.contains("fedsgd") && err.contains("multikrum"), "{err}");
}

#[test]
fn from_name_gives_flowers_defaults() {
    assert_eq!(
        StrategySpec::from_name("fedyogi").unwrap(),
        StrategySpec::FedYogi {
            eta: 0.01,
            eta_l: None,
            beta_1: 0.9,
            beta_2: 0.99,
            tau: 1e-3,
        }
    );
    assert_eq!(
        StrategySpec::from_name("fedavgm").unwrap(),
        StrategySpec::FedAvgM {
            server_learning_rate: 1.0,
            server_momentum: 0.0,
        }
    );
    assert_eq!(
        StrategySpec::from_name("fedtrimmedavg").unwrap(),
        StrategySpec::FedTrimmedAvg { beta: 0.2 }
    );
}

#[test]
fn serde_fills_defaults_and_refuses_unknown_fields() {
    let spec: StrategySpec = serde_json::from_str(r#"{"name":"fedadam","eta":0.05}"#).unwrap();
    assert_eq!(
        spec,
        StrategySpec::FedAdam {
            eta: 0.05,
            eta_l: None,
            beta_1: 0.9,
            beta_2: 0.99,
            tau: 1e-9,
        }
    );
    let spec: StrategySpec =
        serde_json::from_str(r#"{"name":"krum","num_malicious_clients":2}"#).unwrap();
    assert_eq!(
        spec,
        StrategySpec::Krum {
            num_malicious_clients: 2,
            num_clients_to_keep: 0,
        }
    );
    for bad in [
        r#"{"name":"fedadam","etaa":0.05}"#,
        r#"{"name":"fedavgm","server_lr":0.5}"#,
        r#"{"name":"fedavg","eta":0.05}"#,
        r#"{"name":"fedmedian","beta":0.1}"#,
        r#"{"name":"fedadamw"}"#,
        r#"{"name":"FedAvg"}"#,
        r#"{"eta":0.05}"#,
    ] {
        assert!(serde_json::from_str::<StrategySpec>(bad).is_err(), "{bad}");
    }
}

#[test]
fn check_refuses_bad_hyperparameters_naming_the_field() {
    let adam = |eta, beta_1, beta_2, tau| StrategySpec::FedAdam {
        eta,
        eta_l: None,
        beta_1,
        beta_2,
        tau,
    };
    let cases = [
        (adam(0.0, 0.9, 0.99, 1e-9), "strategy.eta"),
        (adam(f64::NAN, 0.9, 0.99, 1e-9), "strategy.eta"),
        (adam(0.1, 1.0, 0.99, 1e-9), "strategy.beta_1"),
        (adam(0.1, 0.9, -0.1, 1e-9), "strategy.beta_2"),
        (adam(0.1, 0.9, 0.99, 0.0), "strategy.tau"),
        (
            StrategySpec::FedYogi {
                eta: 0.01,
                eta_l: Some(-1.0),
                beta_1: 0.9,
                beta_2: 0.99,
                tau: 1e-3,
            },
            "strategy.eta_l",
        ),
        (
            StrategySpec::FedAdagrad {
                eta: f64::INFINITY,
                eta_l: None,
                tau: 1e-9,
            },
            "strategy.eta",
        ),
        (
            StrategySpec::FedAvgM {
                server_learning_rate: 1.0,
                server_momentum: 1.0,
            },
            "strategy.server_momentum",
        ),
        (
            StrategySpec::FedAvgM {
                server_learning_rate: -1.0,
                server_momentum: 0.0,
            },
            "strategy.server_learning_rate",
        ),
        (
            StrategySpec::FedProx { proximal_mu: -0.1 },
            "strategy.proximal_mu",
        ),
        (StrategySpec::FedTrimmedAvg { beta: 0.5 }, "strategy.beta"),
        (
            StrategySpec::Scaffold {
                server_learning_rate: 0.0,
            },
            "strategy.server_learning_rate",
        ),
    ];
    for (spec, field) in cases {
        let err = spec.check().unwrap_err().to_string();
        assert!(err.contains(field), "{spec:?}: {err}");
        // finish refuses an unchecked spec instead of producing NaN weights.
        let mut s = spec.build();
        let global = w(&[0.0]);
        let mut agg = s.aggregator(&global, BUDGET);
        agg.add(&global, 1, Some(&global)).unwrap();
        assert!(s.finish(1, &global, agg, 1).is_err(), "{spec:?}");
    }
    let err = StrategySpec::FedTrimmedAvg { beta: 0.7 }
        .check()
        .unwrap_err()
        .to_string();
    assert!(err.contains("0.7"), "{err}");
}

/// The state survives a JSON round trip, and the restored strategy continues identically.
#[test]
fn strategy_state_round_trips_through_serde() {
    let mut s = StrategySpec::from_name("fedadam").unwrap().build();
    let global = w(&[0.5, -0.25, 3.0]);
    let g1 = round(
        &mut s,
        1,
        &global,
        &[(&[0.1, 0.2, 0.3], 2), (&[1.0, -1.0, 7.0], 5)],
        2,
    )
    .unwrap();
    assert!(s.state.m.is_some() && s.state.v.is_some());

    let json = serde_json::to_string(&s).unwrap();
    let mut restored: Strategy = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, s);

    let next: &[(&[f32], u64)] = &[(&[0.7, 0.1, 2.0], 3)];
    let a = round(&mut s, 2, &g1, next, 1).unwrap();
    let b = round(&mut restored, 2, &g1, next, 1).unwrap();
    assert_eq!(a, b);
    assert_eq!(restored, s);

    let mut scaffold = StrategySpec::from_name("scaffold").unwrap().build();
    let mut agg = scaffold.aggregator(&global, BUDGET);
    agg.add(&global, 1, Some(&w(&[1.0, 2.0, 3.0]))).unwrap();
    scaffold.finish(1, &global, agg, 2).unwrap();
    let back: Strategy = serde_json::from_str(&serde_json::to_string(&scaffold).unwrap()).unwrap();
    assert_eq!(back, scaffold);
}

/// The strategy and its aggregator cross tasks (`spawn_blocking`).
#[test]
fn strategy_types_have_autotraits() {
    fn has_autotraits<T: Send + Sync + Unpin>() {}
    has_autotraits::<Strategy>();
    has_autotraits::<Aggregator>();
    has_autotraits::<StrategySpec>();
}
