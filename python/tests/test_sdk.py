"""The Python SDK against a real `shoal-coordinator serve` (built by cargo; set SHOAL_COORDINATOR_BIN
to use another binary)."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import shoal
from shoal.v1 import common_pb2

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "python"))

import numpy_logreg  # noqa: E402
import sklearn_sgd  # noqa: E402


def coordinator_bin() -> str:
    path = os.environ.get("SHOAL_COORDINATOR_BIN", str(REPO / "target" / "debug" / "shoal-coordinator"))
    assert Path(path).exists(), f"{path} does not exist: build it with `cargo build -p shoal-coordinator` or set SHOAL_COORDINATOR_BIN"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp: Path, job: str, port: int) -> subprocess.Popen:
    (tmp / "job.toml").write_text(job)
    return subprocess.Popen(
        [coordinator_bin(), "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp / "state"),
         "--out", str(tmp / "runs"), "--job", str(tmp / "job.toml"), "--exit-when-done"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_parameters_cross_the_wire_and_layout_is_checked():
    params = {"w": np.arange(6, dtype=np.float32).reshape(3, 2), "b": np.zeros(2, np.float32)}
    wire = shoal.parameters_to_wire(params)
    back = shoal.parameters_from_wire(wire)
    assert list(back) == ["w", "b"] and np.array_equal(back["w"], params["w"])
    with pytest.raises(shoal.ParameterError, match="shape"):
        shoal.parameters_to_wire({"w": np.zeros((2, 3)), "b": np.zeros(2)}, like=params)
    with pytest.raises(shoal.ParameterError, match="same order"):
        shoal.parameters_to_wire({"b": np.zeros(2), "w": np.zeros((3, 2))}, like=params)
    with pytest.raises(shoal.ParameterError, match="NaN"):
        shoal.parameters_to_wire({"w": np.full((3, 2), np.nan), "b": np.zeros(2)})
    bad = common_pb2.Parameters(tensors=[common_pb2.Tensor(name="w", dtype=common_pb2.DTYPE_F32, shape=[2], data=b"\0" * 4)])
    with pytest.raises(shoal.ParameterError, match="do not hold shape"):
        shoal.parameters_from_wire(bad)


def run_federation(tmp_path: Path, job: str, make_client, n: int) -> list:
    """Serves `job`, runs `n` SDK clients in threads until the coordinator exits, returns the rows
    of metrics.csv."""
    port = free_port()
    proc = serve(tmp_path, job, port)
    stop = threading.Event()
    threads = []
    for i in range(n):
        client, datasets = make_client(i, n)
        t = threading.Thread(
            target=shoal.run_client,
            args=(f"127.0.0.1:{port}", f"py-{i}", client, datasets),
            kwargs={"stop": stop},
            daemon=True,
        )
        t.start()
        threads.append(t)
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    for t in threads:
        t.join(timeout=15)
        assert not t.is_alive(), "run_client did not stop when asked"
    [run] = list((tmp_path / "runs").iterdir())
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    print(f"fed_accuracy by round: {[round(float(r['fed_accuracy']), 3) for r in rows]}")
    return rows


def test_numpy_clients_train_a_job_to_the_end(tmp_path: Path):
    job = (REPO / "examples" / "python" / "numpy-digits.toml").read_text().replace("rounds = 30", "rounds = 10")
    rows = run_federation(tmp_path, job, numpy_logreg.make_client, 3)
    assert len(rows) == 10
    assert all(int(r["clients"]) == 3 for r in rows), rows
    assert float(rows[-1]["fed_accuracy"]) > 0.85, rows[-1]


def test_compressed_updates_from_python_clients_are_taken_and_send_fewer_bytes(tmp_path: Path):
    """A job with `[updates] compression`: the SDK sends each update as its change, encoded
    (PROTOCOL §4.1); the coordinator adds it back and the job trains as before with fewer bytes
    up. Fails if the SDK's encoding differs from the coordinator's decoding (updates refused)."""
    job = (REPO / "examples" / "python" / "numpy-digits.toml").read_text().replace("rounds = 30", "rounds = 5")
    for d in ("none", "f16", "bf16", "int8", "topk"):
        (tmp_path / d).mkdir()
    plain = run_federation(tmp_path / "none", job, numpy_logreg.make_client, 3)
    up = lambda rows: sum(int(r["bytes_up"]) for r in rows)  # noqa: E731
    # On this 650-parameter model a message's framing and the evaluation results are a visible
    # share of the bytes, so the ratios stay under the codecs' 2x, 3.9x and 5x. Top-k delays most
    # of each change to later rounds (error feedback): after 5 rounds it trails, but learns.
    for compression, fewer, within in (("f16", 1.8, 0.03), ("bf16", 1.8, 0.03), ("int8", 3.0, 0.03), ("topk", 3.0, 0.2)):
        rows = run_federation(
            tmp_path / compression,
            job + f'\n[updates]\ncompression = "{compression}"\ntopk_fraction = 0.1\n',
            numpy_logreg.make_client,
            3,
        )
        assert all(int(r["clients"]) == 3 for r in rows), (compression, rows)
        ratio = up(plain) / up(rows)
        print(f"{compression}: {ratio:.2f}x fewer bytes up, fed_accuracy {rows[-1]['fed_accuracy']}")
        assert ratio >= fewer, (compression, ratio)
        assert float(rows[-1]["fed_accuracy"]) >= float(plain[-1]["fed_accuracy"]) - within, (compression, rows[-1])


def test_sklearn_example_reaches_its_accuracy_on_five_non_iid_clients(tmp_path: Path):
    job = (REPO / "examples" / "python" / "sklearn-digits.toml").read_text()
    rows = run_federation(tmp_path, job, sklearn_sgd.make_client, 5)
    assert len(rows) == 30
    assert all(int(r["clients"]) == 5 for r in rows), rows
    assert float(rows[-1]["fed_accuracy"]) >= 0.93, rows[-1]


def test_a_rejected_hello_raises_rejected(tmp_path: Path):
    port = free_port()
    proc = serve(tmp_path, (REPO / "examples" / "python" / "numpy-digits.toml").read_text(), port)
    try:
        client, datasets = numpy_logreg.make_client(0, 3)
        with pytest.raises(shoal.Rejected, match="client_name"):
            shoal.run_client(f"127.0.0.1:{port}", "bad\nname", client, datasets, stop=threading.Event())
    finally:
        proc.kill()
        proc.wait()


class NoAccuracy(shoal.Client):
    def evaluate(self, parameters, config):
        return 0.5, 10, {}


def test_an_evaluation_without_accuracy_is_answered_with_an_error_that_says_so():
    from shoal.client import _run_task
    from shoal.v1 import federation_pb2

    params = {"w": np.zeros(2, np.float32)}
    task = federation_pb2.Task(
        task_id="t", job_id="j", round=1, model=common_pb2.ModelSpec(kind="external"),
        parameters=shoal.parameters_to_wire(params), evaluate=federation_pb2.EvaluateTask(),
    )
    result = _run_task(NoAccuracy(), task)
    assert result.WhichOneof("outcome") == "error"
    assert "metrics['accuracy']" in result.error
    task.model.kind = "gbdt"
    assert "runs external models, not `gbdt`" in _run_task(NoAccuracy(), task).error


def test_stop_ends_a_client_stuck_in_the_handshake():
    # A listener that accepts and never answers: no Welcome ever comes.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        stop = threading.Event()
        client, datasets = numpy_logreg.make_client(0, 3)
        t = threading.Thread(target=shoal.run_client, args=(f"127.0.0.1:{port}", "stuck", client, datasets),
                             kwargs={"stop": stop}, daemon=True)
        t.start()
        time.sleep(0.5)
        stop.set()
        t.join(timeout=5)
        assert not t.is_alive(), "run_client did not stop during the handshake"


class MustNotRun(shoal.Client):
    """Fails the test if the coordinator ever sends it a task."""

    calls = 0

    def fit(self, parameters, config):
        MustNotRun.calls += 1
        raise AssertionError("a fit task reached a client that runs external models only")

    def evaluate(self, parameters, config):
        MustNotRun.calls += 1
        raise AssertionError("an evaluate task reached a client that runs external models only")


def sibling_bin(name: str) -> str:
    path = Path(coordinator_bin()).with_name(name)
    assert path.exists(), f"{path} does not exist: build it with `cargo build -p {name}`"
    return str(path)


def test_a_python_client_is_never_sent_a_boosting_task(tmp_path: Path):
    """Beside two Rust clients on a gbdt job, an SDK client (it lists only external models, fit
    and evaluate) gets no task, so no refusal and no quarantine."""
    job = (
        'kind = "train"\ndataset = "iris"\nrounds = 3\n[model]\nkind = "gbdt"\n'
        "[clients]\nmin_available_clients = 2\nmin_fit_clients = 2\nmin_evaluate_clients = 2\n"
    )
    port = free_port()
    proc = serve(tmp_path, job, port)
    rust = [
        subprocess.Popen([sibling_bin("shoal-client"), "--coordinator", f"http://127.0.0.1:{port}",
                          "--builtin", "iris", "--partition", "iid", "--shard", f"{i}/2"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(2)
    ]
    stop = threading.Event()
    info = shoal.DatasetInfo(name="iris", train_examples=40, test_examples=10,
                             feature_names=["a", "b", "c", "d"], class_names=["setosa", "versicolor", "virginica"])
    t = threading.Thread(target=shoal.run_client, args=(f"127.0.0.1:{port}", "py-external", MustNotRun(), [info]),
                         kwargs={"stop": stop}, daemon=True)
    t.start()
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        stop.set()
        for p in rust + [proc]:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert proc.returncode == 0, out
    [run] = list((tmp_path / "runs").iterdir())
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 3 and all(int(r["clients"]) == 2 for r in rows), rows
    assert MustNotRun.calls == 0
    assert "result rejected" not in out, out


def test_mutual_tls_and_tokens(tmp_path: Path):
    """The SDK's TLS path: a coordinator that requires client certificates and client tokens (made
    by `shoal-coordinator certs` and `tokens`), three numpy clients with theirs; a wrong token is a
    Reject."""
    names = "client-0,client-1,client-2"
    for cmd in ("certs", "tokens"):
        subprocess.run([coordinator_bin(), cmd, "--out", str(tmp_path / cmd), "--client-names", names],
                       check=True, capture_output=True)
    pki, tok = tmp_path / "certs", tmp_path / "tokens"
    job = (REPO / "examples" / "python" / "numpy-digits.toml").read_text().replace("rounds = 30", "rounds = 3")
    (tmp_path / "job.toml").write_text(job)
    port = free_port()
    proc = subprocess.Popen(
        [coordinator_bin(), "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state"),
         "--out", str(tmp_path / "runs"), "--job", str(tmp_path / "job.toml"), "--exit-when-done",
         "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
         "--client-ca", str(pki / "ca.pem"), "--client-tokens", str(tok / "client-tokens"),
         "--admin-tokens", str(tok / "admin-tokens")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    stop = threading.Event()
    # Bounds every wait below: a client that is never rejected or never finishes stops here.
    timer = threading.Timer(90, stop.set)
    timer.daemon = True
    timer.start()
    tls = lambda i: {"ca": str(pki / "ca.pem"), "cert": str(pki / f"client-{i}.pem"), "key": str(pki / f"client-{i}.key")}
    try:
        client, datasets = numpy_logreg.make_client(0, 3)
        with pytest.raises(shoal.Rejected):
            shoal.run_client(f"https://127.0.0.1:{port}", "client-0", client, datasets, stop=stop,
                             token_file=str(tok / "client-1.token"), **tls(0))
        threads = []
        for i in range(3):
            client, datasets = numpy_logreg.make_client(i, 3)
            t = threading.Thread(target=shoal.run_client, args=(f"https://127.0.0.1:{port}", f"client-{i}", client, datasets),
                                 kwargs={"stop": stop, "token_file": str(tok / f"client-{i}.token"), **tls(i)}, daemon=True)
            t.start()
            threads.append(t)
        out, _ = proc.communicate(timeout=120)
    finally:
        stop.set()
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    [run] = list((tmp_path / "runs").iterdir())
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 3 and all(int(r["clients"]) == 3 for r in rows), rows


def test_builtin_models_match_finite_differences():
    """SgdClient's gradients (logreg and a two-layer mlp) agree with central differences."""
    from shoal.builtin import SgdClient

    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    y = np.array([0, 2, 1, 2, 0])
    client = SgdClient(x, ["a"] * 5, x, ["a"] * 5)
    cases = {
        "logreg": {"weight": rng.normal(size=(4, 3)), "bias": rng.normal(size=3)},
        "mlp": {"layer0.weight": rng.normal(size=(4, 6)), "layer0.bias": rng.normal(size=6),
                "layer1.weight": rng.normal(size=(6, 3)), "layer1.bias": rng.normal(size=3)},
    }
    for kind, params in cases.items():
        params = {k: v.astype(np.float64) for k, v in params.items()}
        xd = x.astype(np.float64)
        _, grads = client._loss_grad(client._layers(params, kind), xd, y)
        flat = [g for pair in grads for g in pair]
        for (name, t), g in zip(params.items(), flat):
            for i in range(t.size):
                plus = {k: v.copy() for k, v in params.items()}
                minus = {k: v.copy() for k, v in params.items()}
                plus[name].flat[i] += 1e-5
                minus[name].flat[i] -= 1e-5
                lp = client._loss_grad(client._layers(plus, kind), xd, y)[0]
                lm = client._loss_grad(client._layers(minus, kind), xd, y)[0]
                assert abs((lp - lm) / 2e-5 - g.flat[i]) < 1e-4, (kind, name, i)


def digits_job(rounds: int) -> str:
    job = (REPO / "examples" / "digits.toml").read_text().replace("rounds = 30", f"rounds = {rounds}")
    for key in ("min_fit_clients", "min_evaluate_clients", "min_available_clients"):
        job, n = re.subn(rf"^{key} = \d+", f"{key} = 4", job, flags=re.M)
        assert n == 1, f"examples/digits.toml has no `{key}`: update this test"
    return job


def run_digits(tmp_path: Path, python_shards: list, rounds: int) -> list:
    """examples/digits.toml with 4 clients: Rust shoal-client processes for the built-in digits
    shards, except `python_shards`, which SgdClient threads serve from the same rows (exported
    by `shoal-client --export`). Returns metrics.csv's rows."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = serve(tmp_path, digits_job(rounds), port)
    stop = threading.Event()
    rust, threads = [], []
    from shoal.builtin import SgdClient

    for i in range(4):
        flags = ["--builtin", "digits", "--shard", f"{i}/4"]
        if i in python_shards:
            out = tmp_path / f"shard{i}"
            subprocess.run([sibling_bin("shoal-client"), *flags, "--export", str(out)], check=True, capture_output=True)
            client, info = SgdClient.from_csv("digits", str(out / "digits.train.csv"), str(out / "digits.test.csv"))
            t = threading.Thread(target=shoal.run_client, args=(f"127.0.0.1:{port}", f"py-{i}", client, [info]),
                                 kwargs={"stop": stop, "model_kinds": SgdClient.MODEL_KINDS}, daemon=True)
            t.start()
            threads.append(t)
        else:
            rust.append(subprocess.Popen([sibling_bin("shoal-client"), "--coordinator", f"http://127.0.0.1:{port}", *flags],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        stop.set()
        for p in rust + [proc]:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert proc.returncode == 0, out
    assert "result rejected" not in out, out
    [run] = list((tmp_path / "runs").iterdir())
    return list(csv.DictReader(open(run / "metrics.csv")))


def test_a_mixed_federation_trains_as_well_as_rust_clients_alone(tmp_path: Path):
    """2 Rust and 2 Python clients on one logreg job (examples/digits.toml, non-IID shards): all 4
    aggregated every round, and the final accuracy within 0.5 points of 4 Rust clients on the
    same shards. The Python clients shuffle with numpy instead of ChaCha8, so the runs differ in
    their bits, not in what they learn."""
    rounds = 30
    alone = run_digits(tmp_path / "rust", [], rounds)
    mixed = run_digits(tmp_path / "mixed", [2, 3], rounds)
    for rows in (alone, mixed):
        assert len(rows) == rounds and all(int(r["clients"]) == 4 for r in rows), rows
    for column in ("fed_accuracy", "test_accuracy"):
        a, m = float(alone[-1][column]), float(mixed[-1][column])
        print(f"{column}: 4 Rust {a:.4f}, 2 Rust + 2 Python {m:.4f}")
        assert abs(a - m) <= 0.005, (column, a, m)


def test_the_sdk_passes_the_conformance_suite():
    """`shoal-conformance` (tests/conformance/, built by cargo beside the coordinator) plays the
    coordinator's side against tests/conformance_client.py: handshake, heartbeats, silence,
    reconnect, retries, both Rejects, every task kind of every model kind listed, late tasks and
    no replay."""
    harness = sibling_bin("shoal-conformance")
    client = Path(__file__).with_name("conformance_client.py")
    out = subprocess.run([harness, "--", sys.executable, str(client), "{addr}"], capture_output=True, text=True,
                         timeout=300)
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "10 of 10 checks passed" in out.stdout, out.stdout


class Recording(numpy_logreg.NumpyLogReg):
    """Keeps the parameters of its round-1 fit and what it gave as initial parameters."""

    first_fits: list = []
    given: list = []

    def fit(self, parameters, config):
        if config.round == 1:
            Recording.first_fits.append({k: v.copy() for k, v in parameters.items()})
        return super().fit(parameters, config)

    def get_parameters(self, config):
        params = super().get_parameters(config)
        Recording.given.append(params)
        return params


def test_a_job_starts_from_one_python_clients_parameters(tmp_path: Path):
    """`init = "client"` with no tensors listed: one SDK client (they all offer get_parameters)
    is asked, names the tensors, and every client's round 1 starts from its parameters."""
    job = (REPO / "examples" / "python" / "numpy-digits.toml").read_text().replace("rounds = 30", "rounds = 3")
    listed = 'tensors = [\n  { name = "weight", shape = [64, 10] },\n  { name = "bias", shape = [10] },\n]\n'
    assert listed in job, "examples/python/numpy-digits.toml changed: update this test"
    job = job.replace(listed, 'init = "client"\n')

    def make(i, n):
        client, datasets = numpy_logreg.make_client(i, n)
        rec = Recording(client.x_train, client.y_train, client.x_test, client.y_test)
        return rec, datasets

    rows = run_federation(tmp_path, job, make, 3)
    assert len(rows) == 3 and all(int(r["clients"]) == 3 for r in rows), rows
    assert len(Recording.given) == 1, "exactly one client is asked"
    assert len(Recording.first_fits) == 3
    for params in Recording.first_fits:
        assert list(params) == ["weight", "bias"]
        assert all(np.array_equal(params[k], Recording.given[0][k]) for k in params)


def test_a_client_left_out_of_a_job_is_told_why(tmp_path: Path, caplog):
    # Its copy of digits has a class the job does not know: it is left out, and the coordinator
    # says so on its stream (a Notice), which the SDK logs.
    import dataclasses

    job = (REPO / "examples" / "python" / "numpy-digits.toml").read_text()
    job = re.sub(r"min_(fit|evaluate|available)_clients = 3", r"min_\1_clients = 1", job)
    job = job.replace("[clients]", "[clients]\nwait_for_clients_secs = 4", 1)
    # The job fixes its classes (a dataset the clients registered has no holdout here).
    job = "classes = [" + ", ".join(f'"{i}"' for i in range(10)) + "]\n" + job
    port = free_port()
    proc = serve(tmp_path, job, port)
    client, datasets = numpy_logreg.make_client(0, 3)
    odd = [dataclasses.replace(d, class_names=list(d.class_names) + ["zzz"]) for d in datasets]
    stop = threading.Event()
    t = threading.Thread(
        target=shoal.run_client, args=(f"127.0.0.1:{port}", "odd", client, odd),
        kwargs={"stop": stop}, daemon=True,
    )
    caplog.set_level("WARNING")
    t.start()
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    t.join(timeout=15)
    told = [r.getMessage() for r in caplog.records if "left out of the job" in r.getMessage()]
    assert told and 'class "zzz"' in told[0], (told, out[-2000:])


class Padded(numpy_logreg.NumpyLogReg):
    """The numpy client with a large extra tensor that it hands back untouched, so that its tasks
    and updates are over a 1 MiB message limit."""

    def fit(self, parameters, config):
        pad = parameters["pad"]
        out, n, metrics = super().fit(parameters, config)
        return {**out, "pad": pad + 1.0}, n, metrics


def test_a_model_over_the_message_limit_travels_in_chunks_both_ways(tmp_path: Path):
    # 400,000 extra parameters: 1.6 MB a task or update, over the clients' 1 MiB limit. The
    # coordinator sends each task in chunks and the SDK sends each update in chunks.
    job = (REPO / "examples" / "python" / "numpy-digits.toml").read_text().replace("rounds = 30", "rounds = 3")
    job = job.replace('  { name = "bias", shape = [10] },', '  { name = "bias", shape = [10] },\n  { name = "pad", shape = [400000] },')
    assert "pad" in job
    port = free_port()
    proc = serve(tmp_path, job, port)
    stop = threading.Event()
    threads = []
    for i in range(3):
        base, datasets = numpy_logreg.make_client(i, 3)
        client = Padded(base.x_train, base.y_train, base.x_test, base.y_test)
        t = threading.Thread(
            target=shoal.run_client,
            args=(f"127.0.0.1:{port}", f"py-{i}", client, datasets),
            kwargs={"stop": stop, "max_message_bytes": 1 << 20},
            daemon=True,
        )
        t.start()
        threads.append(t)
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    [run] = list((tmp_path / "runs").iterdir())
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 3 and all(int(r["clients"]) == 3 for r in rows), rows
    assert float(rows[-1]["fed_accuracy"]) > 0.8, rows[-1]
    # Each round's updates carried the pad back: about 1.6 MB from each of 3 clients.
    assert int(rows[-1]["bytes_up"]) > 3 * 1_600_000, rows[-1]
    # The model came back through every round's chunks: 3 rounds of +1.
    # (model.safetensors read by hand: an 8-byte header size, a JSON header, the data.)
    raw = (run / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    start, end = json.loads(raw[8:8 + n])["pad"]["data_offsets"]
    pad = np.frombuffer(raw[8 + n + start:8 + n + end], dtype="<f4")
    assert pad.shape == (400000,) and np.allclose(pad, 3.0), pad[:5]


def test_a_client_that_takes_no_chunks_is_left_out_of_a_model_over_its_limit(tmp_path: Path, caplog):
    job = (REPO / "examples" / "python" / "numpy-digits.toml").read_text()
    job = re.sub(r"min_(fit|evaluate|available)_clients = 3", r"min_\1_clients = 1", job)
    job = job.replace("[clients]", "[clients]\nwait_for_clients_secs = 4", 1)
    job = job.replace('  { name = "bias", shape = [10] },', '  { name = "bias", shape = [10] },\n  { name = "pad", shape = [400000] },')
    port = free_port()
    proc = serve(tmp_path, job, port)
    base, datasets = numpy_logreg.make_client(0, 3)
    stop = threading.Event()
    t = threading.Thread(
        target=shoal.run_client, args=(f"127.0.0.1:{port}", "small", Padded(base.x_train, base.y_train, base.x_test, base.y_test), datasets),
        kwargs={"stop": stop, "max_message_bytes": 1 << 20, "max_transfer_bytes": 0}, daemon=True,
    )
    caplog.set_level("WARNING")
    t.start()
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    t.join(timeout=15)
    assert proc.returncode != 0
    told = [r.getMessage() for r in caplog.records if "no chunked transfers" in r.getMessage()]
    assert told and "--max-message-bytes" in told[0], (told, out[-2000:])
