"""A small PyTorch CNN on digits' 8x8 images, federated with Shoal's Python SDK.

Each client holds a Dirichlet(0.5) label-skewed shard of scikit-learn's digits. The job
(``examples/python/torch-digits.toml``) names the network's tensors exactly as
``model.state_dict()`` does, so a client loads the global parameters with ``load_state_dict`` and
sends its own back. PyTorch is not installed by ``pip install ./python`` (its Linux wheel pulls in
gigabytes of CUDA libraries); install it yourself:

    pip install ./python torch scikit-learn
    cargo run --release -p shoal-coordinator -- serve --job examples/python/torch-digits.toml --exit-when-done
    for i in 0 1 2 3 4; do python examples/python/torch_cnn.py --shard $i --shards 5 & done; wait
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import List, Tuple

import numpy as np
import torch
from torch import nn

import shoal
from numpy_logreg import DATASET, load_shard

# Tasks of one client may run in parallel threads; torch's own threads would oversubscribe.
torch.set_num_threads(1)


class Net(nn.Module):
    """conv(1->8, 3x3) -> ReLU -> conv(8->16, 3x3) -> ReLU -> flatten -> linear(16*4*4 -> 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def tensor_specs() -> List[Tuple[str, List[int]]]:
    """The job's `tensors` list: what to put in the TOML (printed by `--print-tensors`)."""
    return [(k, list(v.shape)) for k, v in Net().state_dict().items()]


class TorchCNN(shoal.Client):
    def __init__(self, x_train, y_train, x_test, y_test):
        self.x_train = torch.tensor(x_train).reshape(-1, 1, 8, 8)
        self.y_train = torch.tensor(y_train, dtype=torch.long)
        self.x_test = torch.tensor(x_test).reshape(-1, 1, 8, 8)
        self.y_test = torch.tensor(y_test, dtype=torch.long)
        self.lock = threading.Lock()

    def _net(self, parameters) -> Net:
        net = Net()
        net.load_state_dict({k: torch.from_numpy(v) for k, v in parameters.items()})
        return net

    def fit(self, parameters, config):
        torch.manual_seed(config.seed % 2**63)
        net = self._net(parameters)
        opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        n = len(self.y_train)
        total, seen = 0.0, 0
        for _ in range(config.epochs):
            order = torch.randperm(n)
            for start in range(0, n, max(1, config.batch_size)):
                idx = order[start:start + config.batch_size]
                opt.zero_grad()
                loss = loss_fn(net(self.x_train[idx]), self.y_train[idx])
                loss.backward()
                opt.step()
                total += float(loss) * len(idx)
                seen += len(idx)
        new = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
        return new, n, {"train_loss": total / max(seen, 1)}

    def get_parameters(self, config):
        """For a job with ``init = "client"`` (no tensors listed): PyTorch's own initialisation
        of the network, seeded by the task, named as ``state_dict()`` names them."""
        torch.manual_seed(config.seed)
        return {k: v.detach().numpy().astype(np.float32) for k, v in Net().state_dict().items()}

    def evaluate(self, parameters, config):
        net = self._net(parameters)
        with torch.no_grad():
            logits = net(self.x_test)
            loss = float(nn.functional.cross_entropy(logits, self.y_test))
            acc = float((logits.argmax(1) == self.y_test).float().mean())
        return loss, len(self.y_test), {"accuracy": acc, "classes_present": int(self.y_test.unique().numel())}


def make_client(shard: int, shards: int) -> Tuple[shoal.Client, List[shoal.DatasetInfo]]:
    x_train, y_train, x_test, y_test = load_shard(shard, shards)
    info = shoal.DatasetInfo(
        name=DATASET,
        train_examples=len(y_train),
        test_examples=len(y_test),
        feature_names=[f"pixel{i}" for i in range(64)],
        class_names=[str(c) for c in range(10)],
    )
    return TorchCNN(x_train, y_train, x_test, y_test), [info]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coordinator", default="127.0.0.1:50051")
    p.add_argument("--shard", type=int)
    p.add_argument("--shards", type=int)
    p.add_argument("--print-tensors", action="store_true", help="print the job's tensors list and exit")
    args = p.parse_args()
    if args.print_tensors:
        for name, shape in tensor_specs():
            print(f'  {{ name = "{name}", shape = {shape} }},')
        return
    if args.shard is None or args.shards is None:
        p.error("--shard and --shards are required")
    logging.basicConfig(level=logging.INFO)
    client, datasets = make_client(args.shard, args.shards)
    shoal.run_client(args.coordinator, f"torch-{args.shard}", client, datasets)


if __name__ == "__main__":
    main()
