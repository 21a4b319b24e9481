"""Run one benchmark: ``python scripts/bench.py NAME [--quick]``.

Each benchmark lives in ``scripts/benchmarks/NAME.py`` and defines ``run(quick: bool)``, a generator of
result dicts made by ``benchmarks._common.record``: each carries ``name`` (what it measured) and is printed as
one JSON line. The last one is ``benchmarks._common.summary``: ``name: "summary"``, ``ratio`` (measured),
``target`` (what the ratio should reach) and ``passed``. Exit status: 0 only when the summary says ``passed``,
1 when it does not (or no summary came), so a script or CI step cannot read a missed target as a success.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent / "benchmarks"


def available() -> list[str]:
    """Names of the benchmark modules beside this script."""
    return sorted(m.name for m in pkgutil.iter_modules([str(BENCH_DIR)]) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=available())
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(BENCH_DIR.parent))
    module = importlib.import_module(f"benchmarks.{args.name}")
    common = importlib.import_module("benchmarks._common")
    last: dict | None = None
    for record in module.run(quick=args.quick):
        if "name" not in record:
            print(f"benchmark {args.name!r} yielded a record without 'name': {record}", file=sys.stderr)
            return 1
        print(json.dumps(record), flush=True)
        last = record
    if last is None or last["name"] != common.SUMMARY or not set(common.SUMMARY_KEYS) <= last.keys():
        print(f"benchmark {args.name!r} ended without a summary carrying {common.SUMMARY_KEYS}", file=sys.stderr)
        return 1
    if not last["passed"]:
        print(
            f"benchmark {args.name!r}: its summary says passed: false (ratio {last['ratio']}, target {last['target']})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
