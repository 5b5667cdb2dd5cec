"""A Python client on a built-in `logreg` job, beside Rust `shoal-client` processes.

`shoal.builtin.SgdClient` trains Shoal's built-in logreg and mlp as PROTOCOL §5.1 says, so a
Python process can take one shard of a federation that Rust clients run. To hold exactly the rows
the Rust client for that shard would, export them first (examples/digits.toml with
min_available_clients = 4 shown):

    cargo run --release -p shoal-coordinator -- serve --job examples/digits.toml --exit-when-done
    target/release/shoal-client --builtin digits --shard 0/4 &
    target/release/shoal-client --builtin digits --shard 1/4 &
    target/release/shoal-client --builtin digits --shard 2/4 --export shard2
    python examples/python/builtin_digits.py --train shard2/digits.train.csv --test shard2/digits.test.csv --name py-2
    (the same for shard 3)
"""

from __future__ import annotations

import argparse
import logging

import shoal
from shoal.builtin import SgdClient


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coordinator", default="127.0.0.1:50051")
    p.add_argument("--name", required=True, help="this client's unique name in the federation")
    p.add_argument("--dataset", default="digits", help="the dataset name the job asks for")
    p.add_argument("--train", required=True, help="CSV of the local train split (features, then `label`)")
    p.add_argument("--test", required=True, help="CSV of the local test split")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client, info = SgdClient.from_csv(args.dataset, args.train, args.test)
    shoal.run_client(args.coordinator, args.name, client, [info], model_kinds=SgdClient.MODEL_KINDS)


if __name__ == "__main__":
    main()
