"""``python -m shoal``: the SDK's version and protocol, and a client run from a module of yours."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import shoal


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m shoal",
        description="Shoal's Python SDK. Federate your own model: subclass shoal.Client and call "
        "shoal.run_client, or point `run` at a function of yours that returns (client, datasets).",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("version", help="print the SDK version and the protocol version it speaks")
    r = sub.add_parser(
        "run",
        help="serve a client: FACTORY is module:function returning (client, [DatasetInfo, ...])",
    )
    r.add_argument("factory", metavar="FACTORY", help="e.g. my_model:make_client")
    r.add_argument("--coordinator", required=True, help="host:port, http://host:port or https://host:port")
    r.add_argument("--name", required=True, help="this client's unique name in the federation")
    r.add_argument("--ca", help="the coordinator's CA certificate (PEM): turns TLS on")
    r.add_argument("--cert", help="this client's certificate (PEM), for mutual TLS")
    r.add_argument("--key", help="this client's private key (PEM), for mutual TLS")
    r.add_argument("--token-file", help="file holding this client's token (coordinators with --client-tokens)")
    args = p.parse_args(argv)
    if args.cmd == "version":
        print(f"shoal-fl {shoal.__version__}, protocol version {shoal.PROTOCOL_VERSION}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module, _, func = args.factory.partition(":")
    if not module or not func:
        p.error(f"FACTORY must be module:function, found {args.factory!r}")
    try:
        client, datasets = getattr(importlib.import_module(module), func)()
    except (ImportError, AttributeError) as e:
        p.error(f"cannot load {args.factory}: {e}")
    try:
        shoal.run_client(
            args.coordinator, args.name, client, datasets,
            ca=args.ca, cert=args.cert, key=args.key, token_file=args.token_file,
        )
    except shoal.Rejected as e:
        print(f"rejected by the coordinator: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
