"""scikit-learn's SGDClassifier (logistic loss, one-vs-rest), federated with Shoal's Python SDK.

Each client holds a Dirichlet(0.5) label-skewed shard of scikit-learn's digits; the model's
``coef_`` [10, 64] and ``intercept_`` [10] travel as the job's ``weight`` [64, 10] and ``bias``
[10] (``examples/python/sklearn-digits.toml``). Each round a client loads the global coefficients
into its classifier and runs ``partial_fit`` for the round's epochs at the round's learning rate.

    cargo run --release -p shoal-coordinator -- serve --job examples/python/sklearn-digits.toml --exit-when-done
    for i in 0 1 2 3 4; do python examples/python/sklearn_sgd.py --shard $i --shards 5 & done; wait
"""

from __future__ import annotations

import argparse
import logging
import warnings
from typing import List, Tuple

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier

import shoal
from numpy_logreg import DATASET, load_shard

CLASSES = np.arange(10)
# Once for the process: tasks run in threads, and warnings.catch_warnings is not thread-safe.
warnings.filterwarnings("ignore", category=ConvergenceWarning)


class SklearnSGD(shoal.Client):
    def __init__(self, x_train, y_train, x_test, y_test):
        # SGDClassifier keeps float64 coefficients and wants float64 rows with them.
        self.x_train, self.x_test = x_train.astype(np.float64), x_test.astype(np.float64)
        self.y_train, self.y_test = y_train, y_test

    def _model(self, parameters, lr: float, alpha: float, seed: int) -> SGDClassifier:
        clf = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=lr, alpha=alpha, random_state=seed % 2**32)
        # partial_fit needs the class list once; then the global coefficients replace its own.
        clf.partial_fit(self.x_train[:1], self.y_train[:1], classes=CLASSES)
        clf.coef_ = parameters["weight"].T.astype(np.float64).copy()
        clf.intercept_ = parameters["bias"].astype(np.float64).copy()
        return clf

    def fit(self, parameters, config):
        clf = self._model(parameters, config.lr, config.weight_decay, config.seed)
        rng = np.random.default_rng(config.seed)
        for _ in range(config.epochs):
            order = rng.permutation(len(self.y_train))
            clf.partial_fit(self.x_train[order], self.y_train[order])
        p = clf.predict_proba(self.x_train)
        loss = float(-np.log(np.maximum(p[np.arange(len(self.y_train)), self.y_train], 1e-7)).mean())
        new = {"weight": clf.coef_.T.astype(np.float32), "bias": clf.intercept_.astype(np.float32)}
        return new, len(self.y_train), {"train_loss": loss}

    def evaluate(self, parameters, config):
        clf = self._model(parameters, 0.01, 0.0, 0)
        p = clf.predict_proba(self.x_test)
        loss = float(-np.log(np.maximum(p[np.arange(len(self.y_test)), self.y_test], 1e-7)).mean())
        acc = float((p.argmax(axis=1) == self.y_test).mean())
        return loss, len(self.y_test), {"accuracy": acc, "classes_present": len(np.unique(self.y_test))}


def make_client(shard: int, shards: int) -> Tuple[shoal.Client, List[shoal.DatasetInfo]]:
    x_train, y_train, x_test, y_test = load_shard(shard, shards)
    info = shoal.DatasetInfo(
        name=DATASET,
        train_examples=len(y_train),
        test_examples=len(y_test),
        feature_names=[f"pixel{i}" for i in range(64)],
        class_names=[str(c) for c in CLASSES],
    )
    return SklearnSGD(x_train, y_train, x_test, y_test), [info]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coordinator", default="127.0.0.1:50051")
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--shards", type=int, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    client, datasets = make_client(args.shard, args.shards)
    shoal.run_client(args.coordinator, f"sklearn-{args.shard}", client, datasets)


if __name__ == "__main__":
    main()
