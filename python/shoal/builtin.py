"""Shoal's built-in ``logreg`` and ``mlp`` models in numpy, trained as ``docs/PROTOCOL.md`` §5.1
says, so a Python client can join a built-in job beside Rust ``shoal-client`` processes.

The update rule, loss and scoring follow the Rust client's (``shared/src/models/sgd/``) step for
step in float32; only the shuffling differs (numpy's generator seeded with the task's seed instead
of ChaCha8), so a mixed federation trains to the same accuracy, not to the same bits.

To hold exactly the rows a Rust client would, export its shard and load the files::

    shoal-client --builtin digits --partition iid --shard 2/4 --export shard2
    client, info = SgdClient.from_csv("digits", "shard2/digits.train.csv", "shard2/digits.test.csv")
    shoal.run_client("127.0.0.1:50051", "py-2", client, [info], model_kinds=SgdClient.MODEL_KINDS)
"""

from __future__ import annotations

import csv
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from shoal.client import Client, DatasetInfo, EvaluateConfig, FitConfig, Parameters, ShoalError

def read_csv(path: str, label_column: str = "label") -> Tuple[np.ndarray, List[str], List[str]]:
    """Reads a CSV of numeric features and one label column (class names, as ``shoal-client
    --export`` writes it). Returns ``(features [n, d] float32, labels, feature_names)``."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise ShoalError(f"cannot read {path}: {e}") from e
    if not rows:
        raise ShoalError(f"{path} is empty: expected a header and rows")
    header = rows[0]
    if label_column not in header:
        raise ShoalError(f"{path}: no `{label_column}` column in the header")
    li = header.index(label_column)
    names = [h for i, h in enumerate(header) if i != li]
    x = np.empty((len(rows) - 1, len(names)), dtype=np.float32)
    labels = []
    for r, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise ShoalError(f"{path}:{r + 2}: {len(row)} cells, the header has {len(header)}")
        try:
            x[r] = [float(v) for i, v in enumerate(row) if i != li]
        except ValueError as e:
            raise ShoalError(f"{path}:{r + 2}: {e}") from e
        labels.append(row[li])
    return x, labels, names


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class SgdClient(Client):
    """Shoal's ``logreg`` and ``mlp`` on local rows: minibatch SGD on the mean softmax
    cross-entropy with weight decay (every tensor), FedProx's proximal term and PyTorch-style
    momentum, as PROTOCOL §5.1 describes. SCAFFOLD jobs are not supported (they need control
    variates, which the SDK does not carry); such a task is answered with an error.

    Labels are class *names*; each task's ``class_names`` maps them to the model's outputs.
    """

    #: The model kinds to announce: pass as ``run_client(..., model_kinds=SgdClient.MODEL_KINDS)``.
    MODEL_KINDS = ("logreg", "mlp")

    def __init__(self, x_train: np.ndarray, y_train: Sequence[str], x_test: np.ndarray, y_test: Sequence[str]):
        self.x_train = np.ascontiguousarray(x_train, dtype=np.float32)
        self.x_test = np.ascontiguousarray(x_test, dtype=np.float32)
        self.y_train = [str(v) for v in y_train]
        self.y_test = [str(v) for v in y_test]
        if len(self.y_train) != len(self.x_train) or len(self.y_test) != len(self.x_test):
            raise ShoalError("each split needs one label per row")
        if not len(self.y_train) or not len(self.y_test):
            raise ShoalError("both the train and the test split need at least one row")

    @classmethod
    def from_csv(cls, dataset: str, train_csv: str, test_csv: str, label_column: str = "label") -> Tuple["SgdClient", DatasetInfo]:
        """A client over two CSV files (e.g. from ``shoal-client --export``) and the
        :class:`DatasetInfo` to announce them as ``dataset``."""
        x_train, y_train, names = read_csv(train_csv, label_column)
        x_test, y_test, test_names = read_csv(test_csv, label_column)
        if names != test_names:
            raise ShoalError(f"{train_csv} and {test_csv} have different feature columns")
        client = cls(x_train, y_train, x_test, y_test)
        info = DatasetInfo(
            name=dataset,
            train_examples=len(y_train),
            test_examples=len(y_test),
            feature_names=names,
            class_names=sorted(set(y_train) | set(y_test)),
        )
        return client, info

    # -- the model ---------------------------------------------------------------------------

    @staticmethod
    def _layers(params: Parameters, kind: str) -> List[Tuple[np.ndarray, np.ndarray]]:
        if kind == "logreg":
            return [(params["weight"], params["bias"])]
        if kind == "mlp":
            n = len(params) // 2
            return [(params[f"layer{i}.weight"], params[f"layer{i}.bias"]) for i in range(n)]
        raise ShoalError(f"SgdClient runs logreg and mlp models, not `{kind}`")

    @staticmethod
    def _forward(layers, x: np.ndarray) -> List[np.ndarray]:
        """Pre-activations of every layer; ReLU between layers."""
        zs = []
        a = x
        for i, (w, b) in enumerate(layers):
            z = a @ w + b
            zs.append(z)
            if i + 1 < len(layers):
                a = np.maximum(z, 0.0)
        return zs

    def _loss_grad(self, layers, x: np.ndarray, y: np.ndarray) -> Tuple[float, List[Tuple[np.ndarray, np.ndarray]]]:
        zs = self._forward(layers, x)
        p = _softmax(zs[-1])
        n = len(y)
        rows = np.arange(n)
        loss = float(-np.log(np.maximum(p[rows, y], 1e-12)).sum() / n)
        dz = p
        dz[rows, y] -= 1.0
        dz /= n
        grads = []
        for i in range(len(layers) - 1, -1, -1):
            inp = x if i == 0 else np.maximum(zs[i - 1], 0.0)
            grads.append((inp.T @ dz, dz.sum(axis=0)))
            if i > 0:
                da = dz @ layers[i][0].T
                da[zs[i - 1] <= 0.0] = 0.0
                dz = da
        grads.reverse()
        return loss, grads

    def _indices(self, labels: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
        index: Dict[str, int] = {name: i for i, name in enumerate(class_names)}
        try:
            return np.array([index[v] for v in labels], dtype=np.int64)
        except KeyError as e:
            raise ShoalError(f"local class {e} is not in the job's class list {list(class_names)}") from None

    def _train(self, params: Parameters, kind: str, y: np.ndarray, epochs: int, batch_size: int, lr: float,
               momentum: float, weight_decay: float, proximal_mu: float, seed: int) -> Tuple[Parameters, float]:
        names = list(params)
        w = [np.array(params[k], dtype=np.float32) for k in names]
        anchor = [t.copy() for t in w] if proximal_mu > 0 else None
        velocity = [np.zeros_like(t) for t in w] if momentum > 0 else None
        lr, mom, wd, mu = (np.float32(v) for v in (lr, momentum, weight_decay, proximal_mu))
        rng = np.random.default_rng(seed)
        loss_sum, seen = 0.0, 0
        n = len(y)
        batch = max(1, int(batch_size))
        for _ in range(int(epochs)):
            order = rng.permutation(n)
            for start in range(0, n, batch):
                idx = order[start:start + batch]
                layers = self._layers(dict(zip(names, w)), kind)
                loss, grads = self._loss_grad(layers, self.x_train[idx], y[idx])
                g = [t for pair in grads for t in pair]
                for i in range(len(w)):
                    if wd > 0:
                        g[i] = g[i] + wd * w[i]
                    if anchor is not None:
                        g[i] = g[i] + mu * (w[i] - anchor[i])
                    if velocity is not None:
                        velocity[i] = mom * velocity[i] + g[i]
                        w[i] = w[i] - lr * velocity[i]
                    else:
                        w[i] = w[i] - lr * g[i]
                loss_sum += loss * len(idx)
                seen += len(idx)
        if not all(np.all(np.isfinite(t)) for t in w):
            raise ShoalError(f"local training diverged; lower local.lr (now {float(lr)})")
        return dict(zip(names, w)), loss_sum / max(seen, 1)

    def _score(self, params: Parameters, kind: str, x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
        p = _softmax(self._forward(self._layers(params, kind), x)[-1])
        loss = float(-np.log(np.maximum(p[np.arange(len(y)), y], np.float32(1e-12)).astype(np.float64)).mean())
        return loss, float((p.argmax(axis=1) == y).mean())

    # -- the Client interface ----------------------------------------------------------------

    def fit(self, parameters: Parameters, config: FitConfig) -> Tuple[Parameters, int, Mapping[str, float]]:
        y = self._indices(self.y_train, config.class_names)
        new, loss = self._train(parameters, config.model, y, config.epochs, config.batch_size, config.lr,
                                config.momentum, config.weight_decay, config.proximal_mu, config.seed)
        return new, len(y), {"train_loss": loss}

    def evaluate(self, parameters: Parameters, config: EvaluateConfig) -> Tuple[float, int, Mapping[str, float]]:
        y = self._indices(self.y_test, config.class_names)
        loss, acc = self._score(parameters, config.model, self.x_test, y)
        metrics: Dict[str, float] = {"accuracy": acc, "classes_present": len(set(y.tolist()))}
        if config.personalize_epochs > 0 and config.local is not None:
            # The end-of-job table: plain SGD from the global model (no proximal term).
            local = config.local
            yt = self._indices(self.y_train, config.class_names)
            tuned, _ = self._train(parameters, config.model, yt, config.personalize_epochs, local.batch_size,
                                   local.lr, local.momentum, local.weight_decay, 0.0, config.seed)
            metrics["personalized_accuracy"] = self._score(tuned, config.model, self.x_test, y)[1]
        return loss, len(y), metrics
