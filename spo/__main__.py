"""Command line: ``python -m spo <stage> --config CONFIG.yaml [...] --out PATH``.

Each stage is a thin wrapper over a library function, so tests call the functions directly; the
stages, their arguments and their entry points are declared in spo/stages.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from spo.stages import STAGES, add_stages, thread_count


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"    {s.name:<17} {s.help}" for s in STAGES.values())
    parser = argparse.ArgumentParser(prog="python -m spo", description=f"{__doc__}\nStages:\n\n{listing}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stages(parser.add_subparsers(dest="stage", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from spo.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from spo.environment import check_install, mismatch_message

    mismatches = check_install()
    if mismatches:  # numbers made off the lock may differ from the expected results
        logging.getLogger("spo").warning(mismatch_message(mismatches))
    stage = STAGES[args.stage]
    threads = thread_count(args)
    if threads and stage.torch_threads:
        import torch

        torch.set_num_threads(threads)
    try:
        return stage.entry(config, args)
    except ConfigError as exc:  # a setting a stage checks itself: the same exit code as at load
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _entry() -> int:
    """Through the DAG's job server when one runs on this host (spo/job_server.py), else here."""
    from spo.job_server import run_through_server, server_address

    path = server_address()
    code = run_through_server(path, sys.argv[1:]) if path else None
    return main() if code is None else code


if __name__ == "__main__":
    sys.exit(_entry())
