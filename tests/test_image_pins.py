"""The fused Modal image's pins hold together: every name mamba-ssm imports from transformers exists in the
pinned transformers (mamba-ssm 2.2.x imports `GreedySearchDecoderOnlyOutput`, which transformers 5 removed)."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from melee_wm.cloud import spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from gpu_checks.bundle import fetch_sdist

MAMBA_SDIST_SHA256 = {"2.2.4": "e4114c69302796c91b71e90032c2d974f611608fab331582a80de6eaf075efb9"}
FROM_TRANSFORMERS = re.compile(r"^\s*from (transformers[\w.]*) import \(?([\w, \n]+?)\)?$", re.MULTILINE)


def _pin(name: str, pins: tuple[str, ...]) -> str:
    (version,) = [str(r.specifier)[2:] for r in map(Requirement, pins) if r.name == name]
    return version


def test_the_pins_name_one_version_each_and_transformers_below_5_for_mamba_ssm_2_2():
    mamba = _pin("mamba-ssm", spec.MAMBA_PACKAGES)
    transformers = _pin("transformers", spec.MAMBA_RUNTIME_PINS)
    if tuple(int(x) for x in mamba.split(".")[:2]) < (2, 3):
        assert int(transformers.split(".")[0]) < 5
    assert all(
        Requirement(p).specifier and str(Requirement(p).specifier).startswith("==") for p in spec.MAMBA_BUILD_DEPS
    )


@pytest.mark.network
def test_every_transformers_name_mamba_ssm_imports_exists_in_the_pinned_transformers(tmp_path):
    mamba = _pin("mamba-ssm", spec.MAMBA_PACKAGES)
    sdist = fetch_sdist("mamba-ssm", f"mamba_ssm-{mamba}.tar.gz", MAMBA_SDIST_SHA256[mamba], tmp_path)
    wanted: dict[str, set[str]] = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".py") and "/mamba_ssm/" in member.name:
                for module, names in FROM_TRANSFORMERS.findall(tar.extractfile(member).read().decode()):
                    wanted.setdefault(module, set()).update(n.strip() for n in names.split(",") if n.strip())
    assert "GreedySearchDecoderOnlyOutput" in wanted.get("transformers.generation", set())
    pin = f"transformers=={_pin('transformers', spec.MAMBA_RUNTIME_PINS)}"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(tmp_path), pin],
        check=True,
    )
    (wheel,) = tmp_path.glob("transformers-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for module, names in wanted.items():
            base = module.replace(".", "/")
            source = next(zf.read(p).decode() for p in (f"{base}/__init__.py", f"{base}.py") if p in zf.namelist())
            missing = sorted(n for n in names if not re.search(rf"\b{n}\b", source))
            assert not missing, f"{pin} lacks {missing} in {module}"
