//! Real processes, as a user runs them: `partition`, `serve`, two `shoal-client`s, `job ...`, and
//! the errors a user sees for bad input.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::bin;

/// A free loopback port (bound then released; the coordinator binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Sends SIGTERM and waits (bounded) for a clean exit.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "process ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn three_processes_complete_a_ten_round_job() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    let out = run(Command::new(bin("shoal-coordinator"))
        .args([
            "partition",
            "--dataset",
            "digits",
            "--clients",
            "2",
            "--scheme",
            "dirichlet:0.5",
            "--seed",
            "42",
            "--out",
        ])
        .arg(&shards));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.contains("client-0") && table.contains("client-1") && table.contains("test"),
        "{table}"
    );

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = Proc(
        Command::new(bin("shoal-coordinator"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .arg("--out")
            .arg(tmp.path().join("runs"))
            // the job's holdout is named relative to it, as the README's quick start does
            .arg("--data-dir")
            .arg(tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let clients: Vec<Proc> = (0..2)
        .map(|i| {
            Proc(
                Command::new(bin("shoal-client"))
                    .args([
                        "--coordinator",
                        &url,
                        "--name",
                        &format!("host-{i}"),
                        "--data",
                    ])
                    .arg(format!(
                        "mydigits={}",
                        shards.join(format!("client-{i}.csv")).display()
                    ))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let job = tmp.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "kind = \"train\"\ndataset = \"mydigits\"\nrounds = 10\n[clients]\nwait_for_clients_secs = 30\n\
             [evaluation]\nholdout = \"{}\"\n",
            shards
                .strip_prefix(tmp.path())
                .unwrap()
                .join("test.csv")
                .display()
        ),
    )
    .unwrap();

    // The coordinator may still be starting: submit retries briefly.
    let start = Instant::now();
    let submitted = loop {
        let out = run(Command::new(bin("shoal-coordinator"))
            .args(["job", "submit", "--watch", "--coordinator", &url])
            .arg(&job));
        if out.status.success() || start.elapsed() > Duration::from_secs(20) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = text(&submitted.stdout);
    assert!(
        submitted.status.success(),
        "{stdout}\n{}",
        text(&submitted.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("round ")).count(),
        10,
        "{stdout}"
    );
    let id = stdout
        .split_whitespace()
        .nth(2)
        .expect("`submitted job ID` line")
        .to_string();

    let status = run(Command::new(bin("shoal-coordinator")).args([
        "job",
        "status",
        &id,
        "--coordinator",
        &url,
    ]));
    let status_text = text(&status.stdout);
    assert!(status.status.success());
    assert!(
        status_text.contains("finished") && status_text.contains("rounds 10/10"),
        "{status_text}"
    );

    let csv =
        std::fs::read_to_string(tmp.path().join("runs").join(&id).join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 11, "header + 10 rows:\n{csv}");
    let last: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    let test_acc: f64 = last[5].parse().unwrap();
    assert!(test_acc > 0.85, "final test accuracy {test_acc}");

    let list =
        run(Command::new(bin("shoal-coordinator")).args(["job", "list", "--coordinator", &url]));
    assert!(text(&list.stdout).contains(&id));

    // SIGTERM: everyone exits cleanly.
    for c in clients {
        assert!(c.terminate().success());
    }
    assert!(server.terminate().success());
}

/// Runs a command that must fail with a one-line error containing each of `needles`.
fn fails_with(cmd: &mut Command, needles: &[&str]) {
    let out = run(cmd);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{cmd:?} succeeded");
    assert!(!stderr.contains("panicked"), "{cmd:?} panicked: {stderr}");
    let first = stderr
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or_else(|| panic!("{cmd:?}: no error line in {stderr:?}"));
    for n in needles {
        assert!(first.contains(n), "{cmd:?}: {first:?} lacks {n:?}");
    }
}

#[test]
fn bad_input_gets_a_one_line_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "a,b,label\n1,2,x\n3,oops,y\n").unwrap();
    let coord = bin("shoal-coordinator");
    let client = bin("shoal-client");

    fails_with(
        Command::new(&client)
            .arg("--data")
            .arg(format!("d={}", bad.display())),
        &["bad.csv:3", "oops", "b"],
    );
    fails_with(
        Command::new(&client).args(["--data", "d=/no/such/file.csv"]),
        &["/no/such/file.csv"],
    );
    fails_with(
        Command::new(&client).args(["--builtin", "mnist", "--shard", "0/2"]),
        &["unknown dataset `mnist`"],
    );
    fails_with(
        Command::new(&client).args(["--builtin", "digits", "--shard", "5/2"]),
        &["--shard"],
    );
    fails_with(
        Command::new(&coord).args(["simulate", "--dataset", "nope"]),
        &["unknown dataset `nope`"],
    );
    fails_with(
        Command::new(&coord).args(["simulate", "--partition", "dirichlet:-1"]),
        &["dirichlet"],
    );
    fails_with(
        Command::new(&coord).args(["simulate", "--clients", "0"]),
        &["--clients"],
    );
    fails_with(
        Command::new(&coord).args(["simulate", "--model", "resnet"]),
        &["unknown model `resnet`"],
    );
    fails_with(
        Command::new(&coord).args(["simulate", "--clients", "abc"]),
        &["abc"],
    );
    let job = tmp.path().join("job.toml");
    std::fs::write(&job, "kind = \"train\"\nrounds = -3\n").unwrap();
    fails_with(
        Command::new(&coord).args(["simulate", "--job"]).arg(&job),
        &["job.toml", "rounds"],
    );
    fails_with(
        Command::new(&coord)
            .args([
                "partition",
                "--dataset",
                "digits",
                "--clients",
                "3",
                "--scheme",
                "bogus",
                "--out",
            ])
            .arg(tmp.path()),
        &["bogus"],
    );
    // Nothing listens on port 1.
    fails_with(
        Command::new(&coord).args(["job", "status", "x", "--coordinator", "http://127.0.0.1:1"]),
        &["cannot reach the coordinator at http://127.0.0.1:1"],
    );
    fails_with(
        Command::new(&client).args([
            "--coordinator",
            "http://127.0.0.1:1",
            "--builtin",
            "iris",
            "--shard",
            "0/2",
            "--give-up-after",
            "1",
        ]),
        &["cannot reach the coordinator at http://127.0.0.1:1"],
    );
}

/// Last `test_accuracy` of a run folder's metrics.csv, and its row count.
fn final_test_accuracy(metrics: &std::path::Path) -> (usize, f64) {
    let csv = std::fs::read_to_string(metrics).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    let last: Vec<&str> = rows.last().unwrap().split(',').collect();
    (rows.len(), last[5].parse().unwrap())
}

/// The README's first command, as a user runs it: 30 rounds of digits over 10 non-IID clients.
#[test]
fn default_simulation_meets_its_accuracy_targets() {
    for (partition, target) in [("dirichlet:0.5", 0.93), ("iid", 0.94)] {
        let tmp = tempfile::tempdir().unwrap();
        let out = run(Command::new(bin("shoal-coordinator"))
            .args(["simulate", "--partition", partition, "--out"])
            .arg(tmp.path()));
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
        assert_eq!(
            stdout.lines().filter(|l| l.starts_with("round ")).count(),
            30
        );
        assert!(stdout.contains("centralized baseline"), "{stdout}");
        let run_dir = std::fs::read_dir(tmp.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let (rows, acc) = final_test_accuracy(&run_dir.join("metrics.csv"));
        assert_eq!(rows, 30);
        assert!(
            acc >= target,
            "{partition}: final test accuracy {acc} < {target}"
        );
    }
}

#[test]
fn json_round_lines_parse_and_carry_the_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(Command::new(bin("shoal-coordinator"))
        .args([
            "simulate",
            "--dataset",
            "iris",
            "--clients",
            "3",
            "--partition",
            "iid",
            "--rounds",
            "3",
            "--log-format",
            "json",
            "--out",
        ])
        .arg(tmp.path()));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rounds: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rounds.len(), 3, "{stdout}");
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r["round"], i as u64 + 1);
        assert_eq!(r["clients"], 3);
        for key in [
            "train_loss",
            "fed_accuracy",
            "test_accuracy",
            "bytes_up",
            "seconds",
        ] {
            assert!(r[key].is_number(), "{r} lacks a number for {key}");
        }
    }
}

#[test]
fn study_noniid_writes_its_table_and_chart() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(Command::new(bin("shoal-coordinator"))
        .args([
            "study",
            "noniid",
            "--rounds",
            "2",
            "--clients",
            "5",
            "--model",
            "logreg",
            "--strategies",
            "fedavg,scaffold",
            "--out",
        ])
        .arg(tmp.path()));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let md = std::fs::read_to_string(tmp.path().join("noniid.md")).unwrap();
    assert!(
        md.contains("| fedavg |") && md.contains("| scaffold |") && md.contains("α=0.1"),
        "{md}"
    );
    assert!(!md.contains("failed"), "{md}");
    let csv = std::fs::read_to_string(tmp.path().join("noniid.csv")).unwrap();
    // 4 partitions x 2 strategies x 2 rounds, plus the header.
    assert_eq!(csv.lines().count(), 17, "{csv}");
    let svg = std::fs::read_to_string(tmp.path().join("noniid.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("scaffold"));
}

/// The original demo done right: the federated forest beats every client's local-only forest.
#[test]
fn seed_forest_study_federated_beats_every_local_forest() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(Command::new(bin("shoal-coordinator"))
        .args(["study", "seed-forest", "--out"])
        .arg(tmp.path()));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let md = std::fs::read_to_string(tmp.path().join("seed-forest.md")).unwrap();
    let accuracy = |prefix: &str| -> Vec<f64> {
        md.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.split('|').nth(4).unwrap().trim().parse().unwrap())
            .collect()
    };
    let local = accuracy("| client ");
    let federated = accuracy("| federated");
    let central = accuracy("| centralized");
    assert_eq!(
        (local.len(), federated.len(), central.len()),
        (3, 1, 1),
        "{md}"
    );
    for l in &local {
        assert!(
            federated[0] > *l,
            "federated {} vs local {l}:\n{md}",
            federated[0]
        );
    }
}

/// The benchmark command runs end to end and prints its figures (values are not asserted:
/// timings belong to benchmarks, not tests).
#[test]
fn bench_gbdt_prints_its_figures() {
    let out = run(Command::new(bin("shoal-coordinator")).args([
        "bench",
        "gbdt",
        "--rounds",
        "2",
        "--repeats",
        "2",
    ]));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("M rows x features / s") && stdout.contains("ms per tree"),
        "{stdout}"
    );
}

#[test]
fn bench_transfer_prints_its_figures() {
    // 2,000,000 parameters: an 8 MB message, three chunks each way.
    let out = run(Command::new(bin("shoal-coordinator")).args([
        "bench",
        "transfer",
        "--params",
        "2000000",
        "--repeats",
        "1",
    ]));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("2000000 parameters (8.0 MB a message)")
            && stdout.contains("raw TCP (baseline)")
            && stdout.contains("% of raw TCP"),
        "{stdout}"
    );
}

/// `shoal-client --sessions N`: one process serves a federation of N real sessions over a few
/// shared connections (a load test); a job that needs all 200 of them trains with all of them.
#[test]
fn one_client_process_runs_two_hundred_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let job = tmp.path().join("job.toml");
    std::fs::write(
        &job,
        "kind = \"train\"\ndataset = \"digits\"\nrounds = 2\n[clients]\nmin_available_clients = 200\n\
         min_fit_clients = 200\nmin_evaluate_clients = 200\nwait_for_clients_secs = 120\n\
         [evaluation]\ncentralized_baseline = false\n",
    )
    .unwrap();
    let mut server = Proc(
        Command::new(bin("shoal-coordinator"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--exit-when-done",
            ])
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .arg("--job")
            .arg(&job)
            .arg("--out")
            .arg(tmp.path().join("runs"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _client = Proc(
        Command::new(bin("shoal-client"))
            .args([
                "--coordinator",
                &format!("127.0.0.1:{port}"),
                "--name",
                "load",
                "--builtin",
                "digits",
                "--shard",
                "0/1",
                "--sessions",
                "200",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the job did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "serve exited with {status}");
    let run = std::fs::read_dir(tmp.path().join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    for r in rows {
        assert!(
            r.starts_with(&format!("{},200,", r.split(',').next().unwrap())),
            "{csv}"
        );
    }
    let out = run_cmd_fails(&["--sessions", "0"]);
    assert!(out.contains("--sessions 0: expected 1 to 100000"), "{out}");
}

/// Runs `shoal-client` with `args` (and a built-in dataset), expects it to fail, returns stderr.
fn run_cmd_fails(args: &[&str]) -> String {
    let out = run(Command::new(bin("shoal-client"))
        .args([
            "--coordinator",
            "127.0.0.1:9",
            "--builtin",
            "digits",
            "--shard",
            "0/1",
        ])
        .args(args));
    assert!(!out.status.success());
    text(&out.stderr)
}

#[test]
fn bench_scale_prints_its_figures() {
    let out = run(Command::new(bin("shoal-coordinator")).args([
        "bench",
        "scale",
        "--clients",
        "2,4",
        "--rounds",
        "1",
    ]));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("vs 2 clients") && stdout.contains("baseline") && stdout.contains("2x, "),
        "{stdout}"
    );
    let out =
        run(Command::new(bin("shoal-coordinator")).args(["bench", "scale", "--clients", "1,x"]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--clients 1,x"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bench_aggregate_prints_its_figures() {
    let out = run(Command::new(bin("shoal-coordinator")).args([
        "bench",
        "aggregate",
        "--hidden",
        "256,256",
        "--clients",
        "3",
        "--repeats",
        "1",
    ]));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("mlp(256,256) over 64 features: 85002 parameters")
            && stdout.contains("% of memcpy bandwidth")
            && stdout.contains("x the aggregation"),
        "{stdout}"
    );
    let out =
        run(Command::new(bin("shoal-coordinator")).args(["bench", "aggregate", "--hidden", "8,x"]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--hidden"),
        "{}",
        text(&out.stderr)
    );
}

/// A 3-client digits job over real processes with `--state-dir`; with `kill_after`, the
/// coordinator is SIGKILLed once that many rounds are recorded and started again on the same
/// state dir and port. Returns the final model (`model.safetensors`) and `metrics.csv`'s rows
/// without the `seconds` column.
fn crash_run(
    kill_after: Option<usize>,
    graceful: bool,
    client_order: [usize; 3],
) -> (Vec<u8>, Vec<String>) {
    const ROUNDS: usize = 25;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let job = tmp.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "kind = \"train\"\ndataset = \"digits\"\nrounds = {ROUNDS}\nseed = 7\n[model]\nkind = \"mlp\"\nhidden = [32]\n\
             [local]\nepochs = 2\n[clients]\nmin_fit_clients = 3\nmin_available_clients = 3\nmin_evaluate_clients = 3\n\
             wait_for_clients_secs = 120\n[evaluation]\ncentralized_baseline = false\n"
        ),
    )
    .unwrap();
    let runs = tmp.path().join("runs");
    let log = tmp.path().join("serve.log");
    let serve = || {
        Proc(
            Command::new(bin("shoal-coordinator"))
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .arg("--state-dir")
                .arg(tmp.path().join("state"))
                .arg("--out")
                .arg(&runs)
                .arg("--job")
                .arg(&job)
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut server = serve();
    // A watcher started before any kill follows the job across the restart (S10 #8: it used to
    // exit 1 on "h2 protocol error" although the job resumed and finished).
    let watched = tmp.path().join("watch.out");
    let watcher = kill_after.map(|_| {
        let id = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("submitted job ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Proc(
            Command::new(bin("shoal-coordinator"))
                .args(["job", "watch", &id, "--coordinator", &url])
                .stdout(std::fs::File::create(&watched).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    });
    let mut clients = Vec::new();
    for i in client_order {
        clients.push(Proc(
            Command::new(bin("shoal-client"))
                .args(["--coordinator", &url, "--name", &format!("c{i}")])
                .args(["--builtin", "digits", "--shard", &format!("{i}/3")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        std::thread::sleep(Duration::from_millis(30));
    }
    let run_dir = || -> Option<std::path::PathBuf> {
        std::fs::read_dir(&runs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .next()
    };
    let rows = |dir: &std::path::Path| {
        std::fs::read_to_string(dir.join("metrics.csv"))
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0)
    };
    let start = Instant::now();
    if let Some(k) = kill_after {
        loop {
            assert!(start.elapsed() < Duration::from_secs(120), "no progress");
            if let Some(dir) = run_dir() {
                if rows(&dir) >= k {
                    assert!(rows(&dir) < ROUNDS, "the job ended before the kill");
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if graceful {
            // SIGTERM, as a rolling update sends: the job is left to resume, not failed.
            let pid = server.0.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        } else {
            server.0.kill().unwrap();
        }
        server.0.wait().unwrap();
        server = serve();
        // The restarted process says where it resumed: at or after round k, not from scratch.
        let resumed_at = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("resuming after round ").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no resume line:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            resumed_at >= k,
            "resumed after round {resumed_at}, killed after {k}"
        );
        assert!(
            !std::fs::read_to_string(&log)
                .unwrap()
                .contains("submitted job"),
            "a restart must not submit --job again"
        );
    }
    let dir = loop {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "the job did not finish"
        );
        if let Some(dir) = run_dir().filter(|d| d.join("summary.json").exists()) {
            break dir;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap()).unwrap();
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let rows: Vec<String> = csv
        .lines()
        .skip(1)
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect();
    if let Some(mut w) = watcher {
        let status = loop {
            if let Some(status) = w.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(260),
                "the watcher did not end"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = std::fs::read_to_string(&watched).unwrap();
        assert!(
            status.success(),
            "job watch across the restart: {status}\n{out}"
        );
        for r in 1..=ROUNDS {
            let n = out.matches(&format!("round {r}/{ROUNDS} ")).count();
            assert_eq!(n, 1, "round {r} shown {n} times by job watch:\n{out}");
        }
    }
    drop(clients);
    drop(server);
    assert_eq!(
        model["global"]["weights"]["file"], "model.safetensors",
        "model.json names the tensors' file"
    );
    let tensors = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(tensors.len() > 1000, "model.safetensors holds no model");
    (tensors, rows)
}

/// A coordinator SIGKILLed mid-job and restarted on its state dir resumes after its last
/// checkpointed round; the job finishes with every round recorded once and a final model
/// bit-identical to an uninterrupted run with the same seed. Starting the clients in another
/// order changes nothing either, and neither does a graceful stop (SIGTERM) and restart.
#[test]
fn a_killed_coordinator_resumes_and_runs_reproduce_bit_for_bit() {
    let (model, rows) = crash_run(None, false, [0, 1, 2]);
    assert_eq!(rows.len(), 25);
    let (crashed_model, crashed_rows) = crash_run(Some(8), false, [0, 1, 2]);
    let rounds: Vec<String> = crashed_rows
        .iter()
        .map(|r| r.split(',').next().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (1..=25).map(|r| r.to_string()).collect();
    assert_eq!(rounds, expected, "every round exactly once");
    assert_eq!(crashed_rows, rows, "the same metrics, round by round");
    assert!(
        crashed_model == model,
        "the final model differs after a restart"
    );
    let (shuffled_model, shuffled_rows) = crash_run(None, false, [2, 0, 1]);
    assert_eq!(shuffled_rows, rows);
    assert!(
        shuffled_model == model,
        "client start order changed the model"
    );
    let (stopped_model, stopped_rows) = crash_run(Some(8), true, [0, 1, 2]);
    assert_eq!(stopped_rows, rows, "a SIGTERM stop resumes as well");
    assert!(stopped_model == model);
}

/// The mutual-TLS quick start of docs/guide/security.md, step by step, on a free port in a temporary directory.
#[test]
fn mutual_tls_quick_start_runs_as_the_readme_says() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    let coordinator = || {
        let mut c = Command::new(bin("shoal-coordinator"));
        c.current_dir(tmp.path());
        c
    };
    let out = run(coordinator().args([
        "certs",
        "--out",
        "pki",
        "--clients",
        "2",
        "--names",
        "localhost,127.0.0.1",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(coordinator().args(["tokens", "--out", "pki", "--clients", "2"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client-0.pem",
        "client-1.key",
        "admin.pem",
        "admin.token",
        "client-tokens",
        "admin-tokens",
    ] {
        assert!(pki.join(f).exists(), "{f}");
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("https://{listen}");
    let server = Proc(
        coordinator()
            .args([
                "serve",
                "--listen",
                &listen,
                "--state-dir",
                "state",
                "--out",
                "runs",
            ])
            .args([
                "--tls-cert",
                "pki/server.pem",
                "--tls-key",
                "pki/server.key",
                "--client-ca",
                "pki/ca.pem",
            ])
            .args([
                "--client-tokens",
                "pki/client-tokens",
                "--admin-tokens",
                "pki/admin-tokens",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let admin_tls = [
        "--ca",
        "pki/ca.pem",
        "--cert",
        "pki/admin.pem",
        "--key",
        "pki/admin.key",
    ];
    let start = Instant::now();
    while !run(coordinator()
        .args(["health", "--coordinator", &url])
        .args(admin_tls))
    .status
    .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the coordinator never served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut clients: Vec<Proc> = (0..2)
        .map(|i| {
            Proc(
                Command::new(bin("shoal-client"))
                    .current_dir(tmp.path())
                    .args(["--coordinator", &url, "--name", &format!("client-{i}")])
                    .args(["--ca", "pki/ca.pem"])
                    .args([
                        "--cert",
                        &format!("pki/client-{i}.pem"),
                        "--key",
                        &format!("pki/client-{i}.key"),
                    ])
                    .args(["--token-file", &format!("pki/client-{i}.token")])
                    .args([
                        "--builtin",
                        "digits",
                        "--partition",
                        "iid",
                        "--shard",
                        &format!("{i}/2"),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let job = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/digits.toml");
    let out = run(coordinator()
        .args(["job", "submit"])
        .arg(&job)
        .args(["--watch", "--coordinator", &url])
        .args(admin_tls)
        .args(["--admin-token-file", "pki/admin.token"]));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("round ")).count(),
        30,
        "{stdout}"
    );
    // Without the admin token the same operator is refused; with a client's token too.
    let out = run(coordinator()
        .args(["job", "list", "--coordinator", &url])
        .args(admin_tls)
        .env(
            "SHOAL_ADMIN_TOKEN",
            std::fs::read_to_string(pki.join("client-0.token"))
                .unwrap()
                .trim(),
        ));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("admin token"),
        "{}",
        text(&out.stderr)
    );

    // Rotating client-1's token in the hash file and sending SIGHUP (as docs/guide/security.md says) cuts
    // client-1 off: it comes back with its old token, is refused, and exits with the reason.
    let hashes = std::fs::read_to_string(pki.join("client-tokens")).unwrap();
    let rotated: String = hashes
        .lines()
        .map(|l| match l.split_whitespace().next() {
            Some("client-1") => format!(
                "client-1 {}\n",
                shoal_coordinator::auth::hash_token(&shoal_coordinator::auth::new_token())
            ),
            _ => format!("{l}\n"),
        })
        .collect();
    assert_ne!(rotated, hashes);
    std::fs::write(pki.join("client-tokens"), rotated).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = clients[1].0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "client-1 still runs 30 s after its token was rotated"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    assert!(
        clients[0].0.try_wait().unwrap().is_none(),
        "client-0 kept running"
    );
    // The coordinator is still serving (SIGHUP did not end it).
    assert!(run(coordinator()
        .args(["health", "--coordinator", &url])
        .args(admin_tls))
    .status
    .success());
}

/// S10 #5 and #8: a second `serve` on a state dir in use is refused with a message naming the
/// holder (it used to resume the first one's job and rewrite its metrics); `job status` against a
/// frozen (SIGSTOPped) coordinator ends with an error after `--timeout-secs` (it used to hang).
#[test]
fn a_state_dir_has_one_coordinator_and_a_frozen_one_gets_a_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let serve = |port: u16| {
        let mut c = Command::new(bin("shoal-coordinator"));
        c.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .arg("--out")
            .arg(tmp.path().join("runs"));
        c
    };
    let first = Proc(
        serve(port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let healthy = || {
        run(Command::new(bin("shoal-coordinator")).args(["health", "--coordinator", &url]))
            .status
            .success()
    };
    let start = Instant::now();
    while !healthy() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = run(&mut serve(free_port()));
    let err = text(&second.stderr);
    assert!(!second.status.success());
    assert!(
        err.contains("is in use by another coordinator")
            && err.contains(&format!("pid {}", first.0.id())),
        "{err}"
    );

    let pid = first.0.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let start = Instant::now();
    let out = run(Command::new(bin("shoal-coordinator")).args([
        "job",
        "status",
        "some-job",
        "--coordinator",
        &url,
        "--timeout-secs",
        "2",
    ]));
    let waited = start.elapsed();
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--timeout-secs"), "{err}");
    assert!(waited < Duration::from_secs(20), "took {waited:?}");
    drop(first);
}

/// The operator's side of `job resume`, with real processes: every client of a running job is
/// killed and stays away longer than its wait, so the job fails (`job watch` exits 1); once the
/// clients are back, `job resume ID --watch` goes on after the recorded rounds and exits 0 when
/// the job finishes, every round in `metrics.csv` once. A second resume of the finished job is
/// refused, saying why.
#[test]
fn job_resume_goes_on_with_a_job_that_failed_while_its_clients_were_away() {
    const ROUNDS: usize = 60;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let job = tmp.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "kind = \"train\"\ndataset = \"digits\"\nrounds = {ROUNDS}\n[model]\nkind = \"mlp\"\nhidden = [64]\n\
             [clients]\nmin_fit_clients = 2\nmin_available_clients = 2\nmin_evaluate_clients = 2\n\
             wait_for_clients_secs = 1\n[evaluation]\ncentralized_baseline = false\n"
        ),
    )
    .unwrap();
    let runs = tmp.path().join("runs");
    let _server = Proc(
        Command::new(bin("shoal-coordinator"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .arg("--out")
            .arg(&runs)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let clients = || -> Vec<Proc> {
        (0..2)
            .map(|i| {
                Proc(
                    Command::new(bin("shoal-client"))
                        .args(["--coordinator", &url, "--name", &format!("c{i}")])
                        .args(["--builtin", "digits", "--shard", &format!("{i}/2")])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                )
            })
            .collect()
    };
    let job_cmd = |args: &[&str]| {
        run(Command::new(bin("shoal-coordinator"))
            .arg("job")
            .args(args)
            .args(["--coordinator", &url]))
    };
    let start = Instant::now();
    while !run(Command::new(bin("shoal-coordinator")).args(["health", "--coordinator", &url]))
        .status
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "serve never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let first = clients();
    let out = job_cmd(&["submit", job.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    let metrics = runs.join(&id).join("metrics.csv");
    let rows = || {
        std::fs::read_to_string(&metrics)
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0)
    };
    while rows() < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(first);
    let watched = job_cmd(&["watch", &id]);
    assert_eq!(watched.status.code(), Some(1), "{}", text(&watched.stdout));
    let kept = rows();
    assert!(kept < ROUNDS, "the job ended before its clients left");
    assert!(
        text(&watched.stdout).contains("failed"),
        "{}",
        text(&watched.stdout)
    );

    let _back = clients();
    let resumed = job_cmd(&["resume", &id, "--watch"]);
    let shown = text(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "{shown}\n{}",
        text(&resumed.stderr)
    );
    assert!(shown.starts_with(&format!("resuming {id}")), "{shown}");
    let csv = std::fs::read_to_string(&metrics).unwrap();
    let recorded: Vec<usize> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        recorded,
        (1..=ROUNDS).collect::<Vec<_>>(),
        "every round once"
    );
    let again = job_cmd(&["resume", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("finished; there is nothing to resume"),
        "{}",
        text(&again.stderr)
    );
}
