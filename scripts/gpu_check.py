"""The GPU check, in one command on a bare CUDA machine without network.

    python scripts/gpu_check.py --bundle DIR          # any machine with the dev environment and the package index
    python scripts/gpu_check.py --from-bundle DIR     # the CUDA machine, from the repository root
    python scripts/gpu_check.py                       # a machine with the package's own environment installed

`--bundle` writes what the CUDA machine lacks (pure-Python wheels, mamba-ssm's source, the sample store; at most
40 MiB: `gpu_checks/bundle.py`). `--from-bundle` installs it offline into DIR/site and runs the steps of
`gpu_checks/steps.py`, each in its own subprocess with a time limit, within `--budget` seconds in all: imports,
the store, CUDA, the `gpu` tests (one verdict each), bf16 training steps of mamba2_base and mamba2_large with both
backends on the device-resident loader, a short Lightning training of the smoke experiment, a rollout on CUDA
against the CPU, the simulator's speed and `melee-wm play` on CUDA, and mamba2_base as configured. Each step ran
and held, ran and failed, or could not run (with why); the JSON report (also written to `--report`, after every
step) ends the output. Exit 0 only when every step that could run held; 1 when one failed; 2 without CUDA (the
steps before it still run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_checks/ and benchmarks/ beside this script

from gpu_checks.bundle import BundleError, install_bundle, write_bundle
from gpu_checks.steps import CUDA_STEP, REPO, STEPS, Context
from gpu_checks.verdict import COULD_NOT_RUN, FAILED, HELD, CouldNotRun, StepResult, summarise

RESULT_PREFIX = "GPU_CHECK_RESULT "
DEFAULT_BUDGET_S = 540  # under the 10 minutes one device command may take, with room for the install


def run_step_here(name: str, ctx: Context) -> None:
    """Body of `--step NAME`: run one step in this process and print its results as one prefixed JSON line."""
    fn, _ = STEPS[name]
    start = time.perf_counter()
    try:
        out = fn(ctx)
        results = out if isinstance(out, list) else [StepResult(name, HELD, figures=out)]
    except CouldNotRun as err:
        results = [StepResult(name, COULD_NOT_RUN, str(err))]
    except Exception as err:
        results = [StepResult(name, FAILED, f"{type(err).__name__}: {err}")]
    seconds = round(time.perf_counter() - start, 2)
    for r in results:
        r.seconds = r.seconds or seconds
    print(RESULT_PREFIX + json.dumps([r.as_dict() for r in results]), flush=True)


def run_step(name: str, ctx: Context, env: dict[str, str], limit: float) -> list[StepResult]:
    """Run one step in a subprocess within `limit` seconds; its verdicts, or a failure saying what went wrong."""
    command = [sys.executable, str(Path(__file__).resolve()), "--step", name]
    command += ["--store", str(ctx.store), "--work", str(ctx.work)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return [StepResult(name, FAILED, f"did not finish within {limit:.0f} s", round(time.perf_counter() - start))]
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return [StepResult(**r) for r in json.loads(line[len(RESULT_PREFIX) :])]
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
    return [StepResult(name, FAILED, f"the step process exited {done.returncode} without a result:\n{tail}")]


def run_check(store: Path, work: Path, env: dict[str, str], budget: float, report_path: Path | None, extra: dict):
    """Every step in order (after a missing CUDA only the ones before it), the report printed and written;
    returns the exit status."""
    deadline = time.monotonic() + budget
    ctx = Context(store=store, work=work)
    results: list[StepResult] = []
    cuda = True
    report: dict = {}
    for name, (_, limit) in STEPS.items():
        left = deadline - time.monotonic()
        if not cuda:
            results.append(StepResult(name, COULD_NOT_RUN, "no CUDA device"))
        elif left < 10:
            results.append(StepResult(name, COULD_NOT_RUN, f"the check's {budget:.0f} s budget was spent"))
        else:
            results += run_step(name, ctx, env, min(limit, left))
            last = results[-1]
            why = last.why.splitlines()[0] if last.why else ""
            print(f"gpu_check: {name}: {last.verdict} {why}", file=sys.stderr, flush=True)
            if name == CUDA_STEP and last.verdict != HELD:
                cuda = False
        verdict, code = summarise(results, cuda)
        report = {**verdict, **extra, "steps": [r.as_dict() for r in results]}
        if report_path is not None:
            report_path.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    if not cuda:
        print("gpu_check: CUDA is missing: the steps before it ran, the rest could not (exit 2)", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--bundle", type=Path, metavar="DIR", help="write the bundle into DIR (new or empty)")
    mode.add_argument("--from-bundle", type=Path, metavar="DIR", help="install DIR offline and run the check")
    mode.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help="the encoded store to use (default: the bundle's)")
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--replays", type=Path, help="--bundle: replays to encode (default: the six samples)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all steps together")
    parser.add_argument("--report", type=Path, help="also write the JSON report here, after every step")
    args = parser.parse_args(argv)
    if args.step:
        run_step_here(args.step, Context(store=args.store, work=args.work))
        return 0
    if args.bundle:
        from melee_wm.samples import sample_dir

        manifest = write_bundle(args.bundle, args.replays or sample_dir())
        size = manifest["bytes"] / 2**20
        print(f"bundle {args.bundle}: {size:.1f} MiB, {len(manifest['files'])} files", file=sys.stderr)
        return 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    extra: dict = {}
    store = args.store
    if args.from_bundle:
        try:
            installed = install_bundle(args.from_bundle)
        except BundleError as err:
            print(f"gpu_check: {err}", file=sys.stderr)
            return 1
        extra["bundle"] = installed
        store = store or Path(installed["store"])
        path = [installed["site"], str(REPO), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    if store is None:
        parser.error("--store STORE is needed without --from-bundle")
    with tempfile.TemporaryDirectory(prefix="melee_wm_gpu_check_") as work:
        return run_check(store.resolve(), Path(work), env, args.budget, args.report, extra)


if __name__ == "__main__":
    sys.exit(main())
