"""A softmax regression in plain numpy, federated with Shoal's Python SDK.

Each client holds a Dirichlet(0.5) label-skewed shard of scikit-learn's digits (8x8 images, 10
classes); the job (``examples/python/numpy-digits.toml``) names the model's tensors, ``weight``
[64, 10] and ``bias`` [10]. Start the coordinator, then one process per client:

    cargo run --release -p shoal-coordinator -- serve --job examples/python/numpy-digits.toml --exit-when-done
    python examples/python/numpy_logreg.py --coordinator 127.0.0.1:50051 --shard 0 --shards 3
    python examples/python/numpy_logreg.py --coordinator 127.0.0.1:50051 --shard 1 --shards 3
    python examples/python/numpy_logreg.py --coordinator 127.0.0.1:50051 --shard 2 --shards 3
"""

from __future__ import annotations

import argparse
import logging
from typing import List, Tuple

import numpy as np

import shoal

DATASET = "sk-digits"


def dirichlet_shards(labels: np.ndarray, n: int, alpha: float, seed: int) -> List[np.ndarray]:
    """Row indices per client: each class's rows split by Dirichlet(alpha) proportions."""
    rng = np.random.default_rng(seed)
    parts: List[list] = [[] for _ in range(n)]
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(rng.dirichlet([alpha] * n)) * len(rows)).astype(int)[:-1]
        for i, chunk in enumerate(np.split(rows, cuts)):
            parts[i].extend(chunk.tolist())
    return [np.array(sorted(p), dtype=int) for p in parts]


def load_shard(shard: int, shards: int, seed: int = 42) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """This client's train and test rows (80/20 of its shard), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rows = dirichlet_shards(y, shards, 0.5, seed)[shard]
    rng = np.random.default_rng(seed + shard)
    rows = rng.permutation(rows)
    cut = max(1, int(0.8 * len(rows)))
    x = (x / 16.0).astype(np.float32)
    return x[rows[:cut]], y[rows[:cut]], x[rows[cut:]], y[rows[cut:]]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class NumpyLogReg(shoal.Client):
    """Minibatch SGD on cross-entropy, with weight decay and FedProx's term as the job asks."""

    def __init__(self, x_train, y_train, x_test, y_test):
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test

    def _labels(self, y: np.ndarray, class_names) -> np.ndarray:
        index = {name: i for i, name in enumerate(class_names)}
        return np.array([index[str(v)] for v in y])

    def fit(self, parameters, config):
        w, b = parameters["weight"], parameters["bias"]
        w0, b0 = w.copy(), b.copy()
        y = self._labels(self.y_train, config.class_names)
        rng = np.random.default_rng(config.seed)
        batch = max(1, config.batch_size)
        for _ in range(config.epochs):
            order = rng.permutation(len(y))
            for start in range(0, len(order), batch):
                idx = order[start:start + batch]
                p = softmax(self.x_train[idx] @ w + b)
                p[np.arange(len(idx)), y[idx]] -= 1.0
                p /= len(idx)
                gw = self.x_train[idx].T @ p + config.weight_decay * w + config.proximal_mu * (w - w0)
                gb = p.sum(axis=0) + config.proximal_mu * (b - b0)
                w = w - config.lr * gw
                b = b - config.lr * gb
        loss, _ = self._score(w, b, self.x_train, y)
        return {"weight": w, "bias": b}, len(y), {"train_loss": loss}

    def _score(self, w, b, x, y):
        p = softmax(x @ w + b)
        loss = float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-7)).mean())
        return loss, float((p.argmax(axis=1) == y).mean())

    def get_parameters(self, config):
        """For a job with ``init = "client"``: small random weights, zero biases."""
        rng = np.random.default_rng(config.seed)
        k = len(config.class_names)
        return {"weight": rng.normal(0.0, 0.01, size=(64, k)).astype(np.float32), "bias": np.zeros(k, np.float32)}

    def evaluate(self, parameters, config):
        y = self._labels(self.y_test, config.class_names)
        loss, acc = self._score(parameters["weight"], parameters["bias"], self.x_test, y)
        return loss, len(y), {"accuracy": acc, "classes_present": len(np.unique(y))}


def make_client(shard: int, shards: int) -> Tuple[shoal.Client, List[shoal.DatasetInfo]]:
    """The client for shard ``shard`` of ``shards``, and what it announces."""
    x_train, y_train, x_test, y_test = load_shard(shard, shards)
    info = shoal.DatasetInfo(
        name=DATASET,
        train_examples=len(y_train),
        test_examples=len(y_test),
        feature_names=[f"pixel{i}" for i in range(64)],
        class_names=sorted({str(v) for v in np.concatenate([y_train, y_test])}),
    )
    return NumpyLogReg(x_train, y_train, x_test, y_test), [info]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coordinator", default="127.0.0.1:50051")
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--shards", type=int, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    client, datasets = make_client(args.shard, args.shards)
    shoal.run_client(args.coordinator, f"numpy-{args.shard}", client, datasets)


if __name__ == "__main__":
    main()
