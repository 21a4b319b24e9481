"""`scripts/gpu_check.py`: verdicts never call a step that did not run a pass; its runs compose; and, in a
fresh environment holding only what the bare CUDA machine has (CPU torch standing in), the bundle installs
offline and the check runs every step up to the CUDA requirement, then exits 2 saying CUDA is missing."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from gpu_checks import bundle, steps  # noqa: E402
from gpu_checks.verdict import COULD_NOT_RUN, FAILED, HELD, StepResult, summarise  # noqa: E402

from melee_wm.training.compose import compose_train_config, train_config_from_dict  # noqa: E402

# What the CUDA machine has (besides CUDA): the stand-in environment links exactly these and what they require.
GPU_MACHINE_DISTS = ("torch", "lightning", "torchmetrics", "numpy", "pyarrow", "matplotlib", "rich", "pip")
ABSENT_THERE = ("hydra", "omegaconf", "peppi_py", "wandb", "modal", "mamba_ssm", "pytest", "einops")


def test_a_step_that_could_not_run_is_never_a_pass():
    ran = [StepResult("imports", HELD), StepResult("store", HELD)]
    missing = StepResult("cuda", COULD_NOT_RUN, "no CUDA device")
    assert summarise([*ran, missing], cuda=False)[1] == 2
    verdict, code = summarise([*ran, StepResult("test:fused", COULD_NOT_RUN, "no mamba_ssm")], cuda=True)
    assert code == 0 and verdict["could_not_run"] == ["test:fused"] and verdict["held"] == ["imports", "store"]
    assert summarise([*ran, StepResult("rollout", FAILED, "differs")], cuda=True)[1] == 1
    assert summarise([StepResult("gpu_tests", COULD_NOT_RUN, "no kernels")], cuda=True)[1] == 1  # nothing held
    with pytest.raises(ValueError, match="needs a reason"):
        StepResult("store", COULD_NOT_RUN)


def test_its_training_runs_compose_on_a_given_store(tmp_path):
    paths = [f"data.store={tmp_path}", f"paths.runs_dir={tmp_path}/runs", f"paths.stores_dir={tmp_path}"]
    smoke = train_config_from_dict(compose_train_config([*steps.SMOKE_OVERRIDES, *paths]))
    assert (smoke.trainer.accelerator, smoke.trainer.precision, smoke.data.from_samples) == ("gpu", "bf16-mixed", False)
    base = train_config_from_dict(compose_train_config([*steps.BASE_OVERRIDES, *paths]))
    assert (base.model.backend, base.data.batch_size, base.data.device_resident) == ("auto", 512, True)
    assert (base.data.split, base.data.val_fraction) == (smoke.data.split, smoke.data.val_fraction)
    assert sum(limit for name, (_, limit) in steps.STEPS.items()) <= 20 * 60  # capped further by --budget


def _closure(roots: tuple[str, ...]) -> dict[str, md.Distribution]:
    """The installed distributions `roots` need (their requirements without extras, transitively)."""
    found: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        found[name] = md.distribution(name)
        for text in found[name].requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def _stand_in_env(dest: Path) -> Path:
    """A venv whose site-packages links only the CUDA machine's distributions (and their requirements) from
    this environment; returns its python. Seconds instead of minutes of installing the same files."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    site = next((dest / "lib").glob("python3*/site-packages"))
    for dist in _closure(GPU_MACHINE_DISTS).values():
        root = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {".."}:
            if (root / top).exists() and not (site / top).exists():
                (site / top).symlink_to(root / top)
    return dest / "bin" / "python"


@pytest.mark.slow
@pytest.mark.network
def test_the_bundle_runs_offline_on_a_bare_machine_up_to_cuda(tmp_path, replay_dir):
    start = time.perf_counter()
    manifest = bundle.write_bundle(tmp_path / "bundle", replay_dir)
    wrote = time.perf_counter() - start
    assert manifest["bytes"] <= bundle.MAX_BYTES and manifest["store"]["games"] == 6
    python = _stand_in_env(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    probe = "import importlib.util as u, json, sys; print(json.dumps({m: bool(u.find_spec(m)) for m in sys.argv[1:]}))"
    found = subprocess.run(
        [str(python), "-c", probe, "torch", "lightning", "pip", *ABSENT_THERE],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert json.loads(found.stdout) == {"torch": True, "lightning": True, "pip": True} | dict.fromkeys(
        ABSENT_THERE, False
    )
    start = time.perf_counter()
    done = subprocess.run(
        [str(python), "scripts/gpu_check.py", "--from-bundle", str(tmp_path / "bundle")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
        check=False,
    )
    checked = time.perf_counter() - start
    assert done.returncode == 2, done.stderr[-3000:]
    report = json.loads(done.stdout)
    verdicts = {s["name"]: (s["verdict"], s["why"]) for s in report["steps"]}
    assert verdicts["imports"] == (HELD, "") and verdicts["store"] == (HELD, ""), verdicts
    assert verdicts["cuda"][0] == COULD_NOT_RUN and "no CUDA device" in verdicts["cuda"][1]
    after = list(steps.STEPS)[list(steps.STEPS).index(steps.CUDA_STEP) + 1 :]
    assert all(verdicts[name] == (COULD_NOT_RUN, "no CUDA device") for name in after)
    assert report["exit_code"] == 2 and not report["failed"] and "CUDA is missing" in done.stderr
    assert "Triton" not in report["bundle"]["mamba_ssm"] and "no compiled extensions" in report["bundle"]["mamba_ssm"]
    print(f"bundle written in {wrote:.1f} s ({manifest['bytes'] / 2**20:.1f} MiB); check ran in {checked:.1f} s")
