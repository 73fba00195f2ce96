"""``sealing-key-provider demo``: the end-to-end demo (:mod:`sealing_key_provider.demo`) as a command."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(args.workdir)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on the simulated platform")
    p.add_argument("--workdir", help="keep state and logs here instead of a temporary directory")
    p.set_defaults(handler=_run)
