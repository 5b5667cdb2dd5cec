"""The Python SDK's client for the conformance suite (`shoal-conformance`, tests/conformance/):
`shoal.builtin.SgdClient` on a small synthetic dataset, announcing logreg, mlp and external
models (an external model is driven as a softmax regression, `weight` [features, classes] and
`bias` [classes], which SgdClient trains as logreg).

    shoal-conformance -- python python/tests/conformance_client.py {addr}
"""

from __future__ import annotations

import logging
import sys

import numpy as np

import shoal
from shoal.builtin import SgdClient


class Conformance(SgdClient):
    def fit(self, parameters, config):
        if config.model == "external":
            config = shoal.FitConfig(**{**config.__dict__, "model": "logreg"})
        return super().fit(parameters, config)

    def get_parameters(self, config):
        # The tensors the job lists, or a softmax regression over the local features.
        shapes = dict(config.tensors) or {"weight": (self.x_train.shape[1], len(config.class_names)),
                                          "bias": (len(config.class_names),)}
        rng = np.random.default_rng(config.seed)
        return {name: rng.normal(0.0, 0.01, size=shape).astype(np.float32) for name, shape in shapes.items()}

    def evaluate(self, parameters, config):
        if config.model == "external":
            config = shoal.EvaluateConfig(**{**config.__dict__, "model": "logreg"})
        return super().evaluate(parameters, config)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0, 0, 0], [3, 3, 0, 0], [0, 3, 3, 3]], dtype=np.float32)
    labels = np.repeat(["a", "b", "c"], 40)
    x = centers[np.repeat([0, 1, 2], 40)] + rng.normal(size=(120, 4)).astype(np.float32)
    order = rng.permutation(120)
    train, test = order[:90], order[90:]
    client = Conformance(x[train], labels[train], x[test], labels[test])
    info = shoal.DatasetInfo(name="blobs", train_examples=90, test_examples=30,
                             feature_names=["f0", "f1", "f2", "f3"], class_names=["a", "b", "c"])
    try:
        shoal.run_client(sys.argv[1], "py-conformance", client, [info], model_kinds=("external", "logreg", "mlp"))
    except shoal.Rejected as e:
        print(f"rejected by the coordinator: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
