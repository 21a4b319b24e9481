"""Run one benchmark: ``python scripts/bench.py NAME [--quick]``.

Each benchmark lives in ``scripts/benchmarks/NAME.py`` and defines ``run(quick: bool)``, a generator of
result dicts. Every dict is printed as one JSON line; the last one is the summary and must carry the
keys ``ratio`` (measured) and ``target`` (what the ratio should reach).
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
    last: dict | None = None
    for record in module.run(quick=args.quick):
        print(json.dumps(record), flush=True)
        last = record
    if last is None or not {"ratio", "target"} <= last.keys():
        print(f"benchmark {args.name!r} ended without a summary carrying 'ratio' and 'target'", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
