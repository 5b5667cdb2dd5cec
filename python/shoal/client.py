"""The client side of a Shoal federation for models trained in Python.

A :class:`Client` trains and scores a model given as named numpy arrays; :func:`run_client` keeps
one stream to the coordinator open (Hello, heartbeats, tasks, reconnect with backoff and jitter)
and hands each task of an ``external`` job to the client. See ``docs/PROTOCOL.md`` for the wire
rules this module follows.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
import queue
import random
import signal
import threading
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np

from shoal.v1 import common_pb2, federation_pb2, federation_pb2_grpc

#: The protocol version this SDK speaks (``Hello.protocol_version``).
PROTOCOL_VERSION = 2
#: Largest message sent or received; the coordinator's default is the same.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Largest task taken in chunks (a model over the message limit, PROTOCOL §1.5); the Rust
#: client's default is the same.
MAX_TRANSFER_BYTES = 4 << 30
#: Data per chunk of a large result.
CHUNK_BYTES = 1 << 20
#: What a chunk message adds around its data, with room to spare.
_CHUNK_OVERHEAD = 64
#: How long a connection may take to be answered with Welcome or Reject.
WELCOME_TIMEOUT = 15.0
#: Model kinds whose tasks are Fit and Evaluate on named tensors, which the SDK can run: the
#: ``external`` kind (your model) and Shoal's built-in weights models (trained as PROTOCOL §5.1
#: says; :class:`shoal.builtin.SgdClient` does). Forests and boosting need other task kinds.
SDK_MODEL_KINDS = ("external", "logreg", "mlp")

log = logging.getLogger("shoal")

Parameters = Dict[str, np.ndarray]


class ShoalError(Exception):
    """Base class of the SDK's errors."""


class Rejected(ShoalError):
    """The coordinator refused this client's Hello (wrong version, bad name or dataset, bad
    token). Retrying with the same settings cannot help, so :func:`run_client` stops."""


class ParameterError(ShoalError):
    """Parameters that do not match the job's model (names, shapes, dtype)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A dataset as the Hello announces it: names and sizes, never rows."""

    name: str
    train_examples: int
    test_examples: int
    feature_names: Sequence[str]
    class_names: Sequence[str]


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """What a fit task asks: the round's local training settings as the job gives them."""

    job: str
    round: int
    dataset: str
    #: The job's class list: map your labels into it by name.
    class_names: Tuple[str, ...]
    epochs: int
    batch_size: int
    #: This round's learning rate (the job's decay already applied).
    lr: float
    momentum: float
    weight_decay: float
    #: FedProx: add mu/2 * ||w - w_global||^2 to the local objective.
    proximal_mu: float
    #: Seed for this task's randomness (job seed, round, client): use it and runs reproduce.
    seed: int
    #: AutoML trials only.
    validation: bool
    #: The job's model kind: ``external``, or a built-in kind the client announced.
    model: str = "external"


@dataclasses.dataclass(frozen=True)
class InitialConfig:
    """A request for the model's initial parameters (a job with ``[model] init = "client"``)."""

    job: str
    dataset: str
    class_names: Tuple[str, ...]
    #: The tensors the job lists, as ``(name, shape)``; empty when it leaves naming them to you.
    tensors: Tuple[Tuple[str, Tuple[int, ...]], ...]
    seed: int


@dataclasses.dataclass(frozen=True)
class LocalTraining:
    """The job's local training settings, as an end-of-job evaluation passes them on."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    proximal_mu: float


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """What an evaluation task asks."""

    job: str
    round: int
    dataset: str
    class_names: Tuple[str, ...]
    validation: bool
    #: The job's model kind: ``external``, or a built-in kind the client announced.
    model: str = "external"
    #: The end-of-job client table may ask for personalisation: train this many epochs from
    #: ``parameters`` with ``local`` (no proximal term) and report
    #: ``metrics["personalized_accuracy"]``. 0: not asked; ignoring it is allowed.
    personalize_epochs: int = 0
    seed: int = 0
    local: Optional[LocalTraining] = None


class Client:
    """Subclass this with your model's training and evaluation.

    Parameters are a ``dict`` from tensor name to a float32 ``numpy.ndarray``, in the order the
    job's ``tensors`` list gives; ``fit`` must return the same names and shapes.

    ``fit`` and ``evaluate`` may be called from several threads at once (tasks of different jobs,
    an evaluation beside the next round's fit): keep shared state behind a lock. A task that
    raises is answered with an error result, which the coordinator counts as a refusal.
    """

    def fit(self, parameters: Parameters, config: FitConfig) -> Tuple[Parameters, int, Mapping[str, float]]:
        """Trains locally from the global ``parameters``.

        Returns ``(parameters, num_examples, metrics)``: the new parameters, the number of
        training examples used (the update's weight; at most what the dataset announced), and
        metrics, of which ``train_loss`` is reported on the round line.
        """
        raise NotImplementedError("Client.fit")

    def evaluate(self, parameters: Parameters, config: EvaluateConfig) -> Tuple[float, int, Mapping[str, float]]:
        """Scores ``parameters`` on the local test split.

        Returns ``(loss, num_examples, metrics)``. ``metrics["accuracy"]`` (in [0, 1]) is
        required: it is the round's federated accuracy, and the coordinator refuses an evaluation
        without a valid one (a refusal is a strike; three quarantine the client).
        ``metrics["classes_present"]`` is optional.
        """
        raise NotImplementedError("Client.evaluate")

    def get_parameters(self, config: InitialConfig) -> Parameters:
        """Optional: the model's initial parameters, as your framework initialises it.

        Override it and the client offers them (task kind ``parameters``): a job with
        ``[model] init = "client"`` asks one client before round 1, as Flower does, and every
        client starts from the answer. Tensor names and order are yours when the job lists none.
        """
        raise NotImplementedError("Client.get_parameters")

    def get_properties(self) -> Dict[str, Any]:
        """Free-form facts about this client, for logs."""
        return {}


def _offers_parameters(client: Client) -> bool:
    return type(client).get_parameters is not Client.get_parameters


def parameters_from_wire(p: common_pb2.Parameters) -> Parameters:
    """Decodes tensors (raw little-endian float32) into named arrays, checking each size."""
    out: Parameters = {}
    for t in p.tensors:
        if t.dtype != common_pb2.DTYPE_F32:
            raise ParameterError(f"tensor `{t.name}` has dtype {t.dtype}, expected F32")
        shape = tuple(int(d) for d in t.shape)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if len(t.data) != 4 * n:
            raise ParameterError(
                f"tensor `{t.name}`: {len(t.data)} bytes do not hold shape {list(shape)} of f32"
            )
        out[t.name] = np.frombuffer(t.data, dtype="<f4").reshape(shape).copy()
    return out


def parameters_to_wire(params: Parameters, like: Optional[Parameters] = None) -> common_pb2.Parameters:
    """Encodes named arrays as tensors; with ``like``, checks that names, order and shapes match
    (the coordinator refuses anything else)."""
    if like is not None:
        if list(params) != list(like):
            raise ParameterError(
                f"fit returned tensors {list(params)}, the job's model has {list(like)} (same names, same order)"
            )
        for name, a in params.items():
            if tuple(np.shape(a)) != like[name].shape:
                raise ParameterError(
                    f"fit returned `{name}` with shape {list(np.shape(a))}, the job's model has {list(like[name].shape)}"
                )
    tensors = []
    for name, a in params.items():
        a = np.asarray(a, dtype="<f4")
        if not np.all(np.isfinite(a)):
            raise ParameterError(f"tensor `{name}` holds NaN or infinite values")
        tensors.append(
            common_pb2.Tensor(name=name, dtype=common_pb2.DTYPE_F32, shape=list(a.shape), data=a.tobytes())
        )
    return common_pb2.Parameters(tensors=tensors)


Q8_BLOCK = 256
"""Values per int8 block (one f32 scale each), as PROTOCOL §4.1 fixes it."""


def compress_update(
    new: Parameters,
    base: Parameters,
    compression: int,
    topk_fraction: float,
    seed: int,
    held_back: Optional[Dict[str, np.ndarray]] = None,
) -> common_pb2.Parameters:
    """Encodes the change ``new - base`` as a compressed update (``FitResult.delta``), PROTOCOL
    §4.1: f16, bf16, unbiased stochastic int8 in blocks of 256, or top-k. For top-k, ``held_back``
    keeps the changes left out, per tensor, and adds them to the next update (error feedback)."""
    rng = np.random.default_rng(seed)
    tensors = []
    for name, a in new.items():
        change = (np.asarray(a, dtype="<f4") - base[name]).astype("<f4").ravel()
        if compression == federation_pb2.COMPRESSION_F16:
            dtype, data = common_pb2.DTYPE_F16, change.astype("<f2").tobytes()
        elif compression == federation_pb2.COMPRESSION_BF16:
            bits = change.view("<u4").astype(np.uint64)
            # Round to nearest, ties to even, on the top 16 bits.
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            dtype, data = common_pb2.DTYPE_BF16, rounded.astype("<u2").tobytes()
        elif compression == federation_pb2.COMPRESSION_INT8:
            n = change.size
            padded = np.zeros(-(-n // Q8_BLOCK) * Q8_BLOCK, dtype="<f4")
            padded[:n] = change
            blocks = padded.reshape(-1, Q8_BLOCK)
            scales = np.abs(blocks).max(axis=1).astype("<f4")
            safe = np.where(scales > 0, scales, 1.0)[:, None]
            x = blocks / safe * 127.0
            low = np.floor(x)
            q = low + (rng.random(x.shape) < (x - low))
            q = np.clip(q, -127, 127).astype("i1").ravel()[:n]
            dtype, data = common_pb2.DTYPE_Q8, scales.tobytes() + q.tobytes()
        elif compression == federation_pb2.COMPRESSION_TOPK:
            if not 0.0 < topk_fraction <= 1.0:
                raise ShoalError(f"the task's topk_fraction {topk_fraction} is not in (0, 1]")
            held = held_back if held_back is not None else {}
            if name in held and held[name].shape == change.shape:
                change = change + held[name]
            k = min(change.size, max(1, math.ceil(topk_fraction * change.size)))
            idx = np.sort(np.argpartition(-np.abs(change), k - 1)[:k]) if change.size else np.zeros(0, int)
            values = change[idx].astype("<f4")
            rest = change.copy()
            rest[idx] = 0.0
            held[name] = rest
            dtype, data = common_pb2.DTYPE_TOPK, idx.astype("<u4").tobytes() + values.tobytes()
        else:
            raise ShoalError(f"the task asks compression {compression}, which this SDK does not know")
        tensors.append(common_pb2.Tensor(name=name, dtype=dtype, shape=list(np.shape(a)), data=data))
    return common_pb2.Parameters(tensors=tensors)


def _run_task(client: Client, task: federation_pb2.Task,
              model_kinds: Sequence[str] = ("external",),
              held_back: Optional[Dict[str, Dict[str, np.ndarray]]] = None) -> federation_pb2.TaskResult:
    """One task through the client; any failure becomes an error result naming the reason.
    ``held_back`` keeps top-k's left-out changes per job."""
    result = federation_pb2.TaskResult(task_id=task.task_id, job_id=task.job_id, round=task.round)
    try:
        if task.model.kind not in model_kinds:
            raise ShoalError(f"this client runs {', '.join(model_kinds)} models, not `{task.model.kind}`")
        kind = task.WhichOneof("kind")
        if kind == "get_parameters":
            config = InitialConfig(
                job=task.job_id,
                dataset=task.dataset,
                class_names=tuple(task.class_names),
                tensors=tuple((t.name, tuple(int(d) for d in t.shape)) for t in task.model.external.tensors),
                seed=task.seed,
            )
            given = client.get_parameters(config)
            result.parameters.CopyFrom(federation_pb2.ParametersResult(parameters=parameters_to_wire(dict(given))))
            return result
        params = parameters_from_wire(task.parameters)
        if kind == "fit":
            if task.fit.HasField("control"):
                raise ShoalError("SCAFFOLD jobs need control variates, which the Python SDK does not carry")
            local = task.fit.local
            config = FitConfig(
                job=task.job_id,
                round=task.round,
                dataset=task.dataset,
                class_names=tuple(task.class_names),
                epochs=local.epochs,
                batch_size=local.batch_size,
                lr=local.lr,
                momentum=local.momentum,
                weight_decay=local.weight_decay,
                proximal_mu=local.proximal_mu,
                seed=task.seed,
                validation=task.validation,
                model=task.model.kind,
            )
            new, n, metrics = client.fit({k: v.copy() for k, v in params.items()}, config)
            train_loss = float(metrics.get("train_loss", 0.0))
            if not math.isfinite(train_loss):
                raise ShoalError(f"fit reported train_loss {train_loss}: it must be finite")
            if int(n) < 1:
                raise ShoalError(f"fit reported {n} examples: it must be at least 1")
            wire = parameters_to_wire(new, like=params)
            compression = task.fit.compression
            if compression != federation_pb2.COMPRESSION_NONE:
                jobs = held_back if held_back is not None else {}
                if task.job_id not in jobs and len(jobs) >= 4:
                    jobs.pop(next(iter(jobs)))  # the job seen longest ago
                wire = compress_update(
                    new, params, compression, task.fit.topk_fraction, task.seed,
                    jobs.setdefault(task.job_id, {}),
                )
            result.fit.CopyFrom(
                federation_pb2.FitResult(
                    parameters=wire,
                    num_examples=int(n),
                    train_loss=train_loss,
                    delta=compression != federation_pb2.COMPRESSION_NONE,
                )
            )
        elif kind == "evaluate":
            ev = task.evaluate
            local = ev.local if ev.HasField("local") else None
            config = EvaluateConfig(
                job=task.job_id,
                round=task.round,
                dataset=task.dataset,
                class_names=tuple(task.class_names),
                validation=task.validation,
                model=task.model.kind,
                personalize_epochs=ev.personalize_epochs,
                seed=task.seed,
                local=None if local is None else LocalTraining(
                    epochs=local.epochs, batch_size=local.batch_size, lr=local.lr, momentum=local.momentum,
                    weight_decay=local.weight_decay, proximal_mu=local.proximal_mu,
                ),
            )
            loss, n, metrics = client.evaluate(params, config)
            if "accuracy" not in metrics or not 0.0 <= float(metrics["accuracy"]) <= 1.0:
                raise ShoalError(
                    f"evaluate must report metrics['accuracy'] in [0, 1], found {metrics.get('accuracy')!r}"
                )
            if not math.isfinite(float(loss)) or int(n) < 1:
                raise ShoalError(f"evaluate reported loss {loss} on {n} examples: give a finite loss on at least 1 example")
            evaluated = federation_pb2.EvaluateResult(
                num_examples=int(n),
                loss=float(loss),
                accuracy=float(metrics["accuracy"]),
                classes_present=int(metrics.get("classes_present", 0)),
            )
            if "personalized_accuracy" in metrics:
                pa = float(metrics["personalized_accuracy"])
                if not 0.0 <= pa <= 1.0:
                    raise ShoalError(f"evaluate reported personalized_accuracy {pa}: it must be in [0, 1]")
                evaluated.personalized_accuracy = pa
            result.evaluate.CopyFrom(evaluated)
        else:
            raise ShoalError(f"this client does not run `{kind}` tasks")
    except Exception as e:  # the coordinator hears why instead of waiting for the deadline
        log.warning("task %s failed: %s", task.task_id, e)
        result.error = f"{type(e).__name__}: {e}"
    return result


def _hello(name: str, datasets: Sequence[DatasetInfo], token: str,
           model_kinds: Sequence[str] = ("external",), offers_parameters: bool = False,
           max_bytes: int = 0, max_transfer: int = 0) -> federation_pb2.ClientMessage:
    return federation_pb2.ClientMessage(
        hello=federation_pb2.Hello(
            protocol_version=PROTOCOL_VERSION,
            client_name=name,
            token=token,
            datasets=[
                federation_pb2.DatasetInfo(
                    name=d.name,
                    train_examples=d.train_examples,
                    test_examples=d.test_examples,
                    feature_names=list(d.feature_names),
                    class_names=list(d.class_names),
                )
                for d in datasets
            ],
            model_kinds=list(model_kinds),
            task_kinds=["fit", "evaluate"] + (["parameters"] if offers_parameters else []),
            # The channel's limit: a job whose model does not fit is not sent here.
            max_message_bytes=max_bytes,
            # Tasks over the message limit may come in chunks up to this size (0: none).
            max_transfer_bytes=max_transfer,
        )
    )


class _Assembler:
    """Takes in one stream's chunks, one message at a time (PROTOCOL §1.5)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0
        self.buf: Optional[bytearray] = None

    @property
    def open(self) -> bool:
        return self.buf is not None

    def push(self, chunk: federation_pb2.Chunk) -> Optional[bytes]:
        """Adds a chunk; returns the whole message once complete; raises ShoalError on a
        transfer the protocol does not allow."""
        if self.buf is None:
            if chunk.total_bytes > self.limit:
                raise ShoalError(
                    f"a chunked message of {chunk.total_bytes} bytes is over this client's "
                    f"max_transfer_bytes ({self.limit})")
            self.buf, self.total = bytearray(), chunk.total_bytes
        if chunk.total_bytes != self.total or chunk.offset != len(self.buf) or not chunk.data \
                or len(self.buf) + len(chunk.data) > self.total:
            self.buf = None
            raise ShoalError("a chunk out of order, empty, or past its message's end")
        self.buf += chunk.data
        if len(self.buf) < self.total:
            return None
        whole, self.buf = bytes(self.buf), None
        return whole


def _split(msg: federation_pb2.ClientMessage, size: int) -> List[federation_pb2.ClientMessage]:
    """``msg`` as the messages that carry it: itself, or chunks of at most ``size`` bytes."""
    data = msg.SerializeToString()
    if len(data) <= size:
        return [msg]
    return [
        federation_pb2.ClientMessage(
            chunk=federation_pb2.Chunk(total_bytes=len(data), offset=at, data=data[at:at + size]))
        for at in range(0, len(data), size)
    ]


def _read_tls(ca: Optional[str], cert: Optional[str], key: Optional[str]) -> Optional[Tuple[Optional[bytes], Optional[bytes], Optional[bytes]]]:
    """The TLS files, read once (a missing file is an error now, not at some reconnect)."""
    if (cert is None) != (key is None):
        raise ShoalError("give both cert and key (mutual TLS), or neither")
    if ca is None and cert is None:
        return None

    def read(path: Optional[str]) -> Optional[bytes]:
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise ShoalError(f"cannot read {path}: {e}") from e

    return read(ca), read(cert), read(key)


def _channel(address: str, tls: Optional[Tuple[Optional[bytes], Optional[bytes], Optional[bytes]]], max_bytes: int) -> grpc.Channel:
    target = address.split("://", 1)[-1]
    options = [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if tls is None and not address.startswith("https://"):
        return grpc.insecure_channel(target, options=options)
    ca, cert, key = tls or (None, None, None)
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(target, creds, options=options)


def _session(address: str, name: str, client: Client, datasets: Sequence[DatasetInfo], token: str,
             tls, max_bytes: int, stop: threading.Event, pool: concurrent.futures.Executor,
             model_kinds: Sequence[str], max_transfer: int = MAX_TRANSFER_BYTES,
             chunk_bytes: int = CHUNK_BYTES) -> bool:
    """One stream: returns True if it was welcomed (so the backoff resets); raises Rejected."""
    # Items are lists: a large result's chunks go in as one item, so no heartbeat comes between.
    outbox: "queue.Queue[Optional[List[federation_pb2.ClientMessage]]]" = queue.Queue()
    outbox.put([_hello(name, datasets, token, model_kinds, _offers_parameters(client), max_bytes, max_transfer)])
    done = threading.Event()
    reason = ["the stream ended"]
    # Chunk size for results: 0 until a Welcome says the coordinator takes chunks.
    chunk = [0]
    # Top-k's left-out changes, per job (compressed updates, PROTOCOL §4.1).
    held_back: Dict[str, Dict[str, np.ndarray]] = {}

    def requests() -> Iterator[federation_pb2.ClientMessage]:
        while True:
            m = outbox.get()
            if m is None:
                return
            yield from m

    def run(task: federation_pb2.Task) -> None:
        # Skipped when the session is over (the coordinator re-sends what it still wants) or the
        # task's deadline has passed (nobody waits for the answer).
        if done.is_set() or (task.deadline_unix_ms and time.time() * 1000 > task.deadline_unix_ms):
            return
        result = _run_task(client, task, model_kinds, held_back)
        if not done.is_set():
            msg = federation_pb2.ClientMessage(result=result)
            outbox.put(_split(msg, chunk[0]) if chunk[0] else [msg])

    with _channel(address, tls, max_bytes) as channel:
        stub = federation_pb2_grpc.FederationStub(channel)
        call = stub.Connect(requests())
        last_heard = [time.monotonic()]
        welcomed = threading.Event()
        every = [5.0]

        def watch() -> None:
            # Until Welcome: give up after WELCOME_TIMEOUT. After it: a heartbeat every interval,
            # and silence from the coordinator for 3 intervals ends the stream even if TCP has not
            # noticed. `stop` ends it at once.
            started = time.monotonic()
            tick = time.monotonic()
            while not done.is_set():
                if stop.wait(0.1):
                    reason[0] = "stopping"
                    call.cancel()
                    return
                now = time.monotonic()
                if not welcomed.is_set():
                    if now - started > WELCOME_TIMEOUT:
                        reason[0] = f"no Welcome within {WELCOME_TIMEOUT:.0f} s"
                        call.cancel()
                        return
                    continue
                if now - tick < every[0]:
                    continue
                if now - tick > 2 * every[0]:
                    # This thread overslept (a long call held the interpreter): what looked like
                    # silence may be ours, so start counting again.
                    last_heard[0] = now
                tick = now
                if now - last_heard[0] > 3 * every[0]:
                    reason[0] = f"nothing from the coordinator for {3 * every[0]:.0f} s"
                    call.cancel()
                    return
                outbox.put([federation_pb2.ClientMessage(heartbeat=federation_pb2.Heartbeat(unix_ms=int(time.time() * 1000)))])

        threading.Thread(target=watch, daemon=True).start()
        try:
            first = next(call)
            if first.WhichOneof("msg") == "reject":
                raise Rejected(first.reject.reason)
            if first.WhichOneof("msg") != "welcome":
                raise ShoalError(f"expected Welcome or Reject, got {first.WhichOneof('msg')}")
            every[0] = max(first.welcome.heartbeat_interval_ms, 500) / 1000.0
            if first.welcome.max_transfer_bytes > 0:
                theirs = first.welcome.max_message_bytes or MAX_MESSAGE_BYTES
                chunk[0] = max(1, min(chunk_bytes, theirs - _CHUNK_OVERHEAD, max_bytes - _CHUNK_OVERHEAD))
            last_heard[0] = time.monotonic()
            welcomed.set()
            log.info("connected to %s as %s", address, first.welcome.client_id)
            chunks = _Assembler(max_transfer)
            for msg in call:
                last_heard[0] = time.monotonic()
                kind = msg.WhichOneof("msg")
                if kind == "chunk":
                    whole = chunks.push(msg.chunk)
                    if whole is None:
                        continue
                    msg = federation_pb2.CoordinatorMessage.FromString(whole)
                    kind = msg.WhichOneof("msg")
                    if kind == "chunk":
                        raise ShoalError("a chunk inside a chunked message")
                elif chunks.open:
                    raise ShoalError("a message between the chunks of another")
                if kind == "task":
                    pool.submit(run, msg.task)
                elif kind == "notice":
                    # Why this client is left out of a job or one of its results was refused.
                    log.warning("coordinator (job %s): %s", msg.notice.job_id[:128], msg.notice.message[:1200])
        except ShoalError:
            # A transfer the protocol does not allow: end this stream; run_client reconnects.
            call.cancel()
            raise
        except grpc.RpcError as e:
            if not stop.is_set():
                if e.code() == grpc.StatusCode.CANCELLED:
                    log.warning("stream ended: %s", reason[0])
                else:
                    log.warning("stream ended: %s %s", e.code(), e.details())
        finally:
            done.set()
            outbox.put(None)
        return welcomed.is_set()


def run_client(
    coordinator: str,
    name: str,
    client: Client,
    datasets: Sequence[DatasetInfo],
    *,
    ca: Optional[str] = None,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    token: Optional[str] = None,
    token_file: Optional[str] = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_transfer_bytes: int = MAX_TRANSFER_BYTES,
    max_backoff: float = 10.0,
    stop: Optional[threading.Event] = None,
    model_kinds: Sequence[str] = ("external",),
) -> None:
    """Serves ``client`` to the coordinator at ``coordinator`` (``host:port``, ``http://`` or
    ``https://``) until ``stop`` is set or, from the main thread, SIGTERM or SIGINT arrives.

    ``ca`` (the coordinator's CA) turns TLS on; ``cert`` and ``key`` add this client's
    certificate (mutual TLS). ``token`` or ``token_file`` is sent for coordinators with
    ``--client-tokens``. Broken streams are re-opened with exponential backoff and jitter;
    a Reject raises :class:`Rejected`.

    A task or result larger than 1 MiB (or than ``max_message_bytes``) travels in chunks, up to
    ``max_transfer_bytes`` (0: this client takes no chunks, so a job whose model is over
    ``max_message_bytes`` leaves it out, saying why).

    ``model_kinds`` are the model kinds announced in the Hello (see :data:`SDK_MODEL_KINDS`);
    the coordinator sends this client tasks of those kinds only. Announce a built-in kind only if
    your client trains it as PROTOCOL §5.1 says (:class:`shoal.builtin.SgdClient` does).
    """
    if not datasets:
        raise ShoalError("announce at least one dataset (DatasetInfo)")
    model_kinds = tuple(model_kinds)
    unknown = [k for k in model_kinds if k not in SDK_MODEL_KINDS]
    if unknown or not model_kinds:
        raise ShoalError(
            f"model_kinds {list(model_kinds)}: the SDK runs fit and evaluate tasks of {', '.join(SDK_MODEL_KINDS)} "
            "models (forest and gbdt need other task kinds)"
        )
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise ShoalError(f"cannot read the token file {token_file}: {e}") from e
    tls = _read_tls(ca, cert, key)
    # One bounded pool for every session: tasks run beside the stream, at most one per core.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="shoal-task")
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, lambda *_: stop.set())
    try:
        backoff = 0.2
        while not stop.is_set():
            try:
                if _session(coordinator, name, client, datasets, token or "", tls, max_message_bytes, stop, pool,
                            model_kinds, max_transfer_bytes):
                    backoff = 0.2
            except Rejected:
                raise
            except (grpc.RpcError, ShoalError, StopIteration) as e:
                log.warning("connection failed: %s; retrying", e)
            if stop.wait(backoff * random.uniform(0.5, 1.0)):
                break
            backoff = min(backoff * 2, max_backoff)
        log.info("client %s stopped", name)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
