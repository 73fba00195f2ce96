"""``make bench``: run every benchmark, print the figures and write them to a file."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import sys
from pathlib import Path

#: Benchmark modules, each with ``run() -> list[str]``.
MODULES = ("bench.cli_bench", "bench.dcap_bench", "bench.provider_bench")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench-results.txt")
    parser.add_argument("--only", help="run only this module (e.g. bench.dcap_bench)")
    parser.add_argument(
        "--td-venv", help="a client-only install (make's build/td-venv) for the TD-side command figures"
    )
    args = parser.parse_args()
    lines = [
        f"# gramine-sealing-key-provider benchmarks, {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}",
        f"# python {platform.python_version()}, {platform.machine()}, {platform.processor() or 'cpu'}",
    ]
    if args.td_venv:
        os.environ["SKP_BENCH_TD_VENV"] = args.td_venv
    for name in MODULES:
        if args.only and name != args.only:
            continue
        section = importlib.import_module(name).run()
        lines += ["", *section]
        print("\n".join(section), flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"\nfigures written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
