"""The bundle the GPU check carries to a CUDA machine that has no network: pure-Python wheels, mamba-ssm's source
and a pre-encoded sample store, at most 40 MiB.

The machine a check is likely to get has torch (CUDA), lightning, torchmetrics, triton, numpy, pyarrow,
matplotlib and rich, but no hydra-core, omegaconf, pytest, einops, peppi-py or mamba-ssm. `write_bundle` runs
on any machine with the package's dev environment and the package index; `install_bundle` runs on the CUDA
machine, offline: it checks every file's sha256, installs the wheels into a folder of the bundle
(`pip install --no-index --no-deps --target`, the machine's own environment is left alone) and, when mamba_ssm
is not installed there, extracts its Python files beside them. mamba-ssm has no wheel and its compiled
extensions take many minutes of nvcc to build; the model only needs its Triton SSD scan and gated norm, which
`melee_wm.model.fused` imports without the package `__init__` (which needs the compiled extension).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

BUNDLE_FORMAT = 1
MANIFEST = "bundle.json"
MAX_BYTES = 40 * 2**20  # the device tool carries 64 MiB per call, with the working tree
TARGET_PYTHON, TARGET_PLATFORM = "3.12", "manylinux2014_x86_64"
# Pure-Python wheels the check needs beyond the CUDA machine's packages (every one is py3-none-any).
WHEELS = (
    "hydra-core==1.3.8",  # the training config (training.compose)
    "omegaconf==2.3.1",
    "einops==0.8.2",  # mamba_ssm's Triton modules
    "pytest==9.2.0",  # the gpu-marked tests
    "pluggy==1.7.0",
    "iniconfig==2.3.1",
)
SDIST_ONLY_WHEELS = ("antlr4-python3-runtime==4.9.3",)  # omegaconf's parser: no wheel on the index, built here
MAMBA_SSM_SDIST = "mamba_ssm-2.3.2.post1.tar.gz"
MAMBA_SSM_SHA256 = "104cc47e9101e5401a675fa2b784f2952b9b037f3b1dd83b5ac544394e95d028"
STORE_SHARD_FRAMES = 8000
WHEELS_DIR, SOURCES_DIR, STORE_DIR, SITE_DIR = "wheels", "sources", "store", "site"


class BundleError(RuntimeError):
    """A bundle that cannot be written or installed (the message names the file and what is wrong)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip(*args: str) -> None:
    """Run pip of this interpreter; BundleError with its output when it fails."""
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        output = done.stdout[-2000:] + done.stderr[-2000:]
        raise BundleError(f"pip {' '.join(args)} failed ({done.returncode}):\n{output}")


def fetch_sdist(project: str, filename: str, sha256: str, dest: Path) -> Path:
    """An sdist from the index pip uses (its PEP 691 listing: sdist-only projects cannot be `pip download`ed
    without building them), checked against the pinned `sha256`; returns its path in `dest`."""
    from melee_wm.samples import index_url

    page = urllib.parse.urljoin(index_url(), f"{project}/")
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = {f["filename"]: f for f in json.load(response)["files"]}
    if filename not in files:
        raise BundleError(f"{filename} is not listed on {page}")
    path = dest / filename
    url = urllib.parse.urljoin(page, files[filename]["url"])
    with urllib.request.urlopen(url, timeout=120) as response, path.open("wb") as out:
        shutil.copyfileobj(response, out)
    if _sha256(path) != sha256:
        raise BundleError(f"{path}: sha256 {_sha256(path)} differs from the pinned {sha256}")
    return path


def write_bundle(out: Path, replays: Path) -> dict[str, Any]:
    """Write the bundle into `out` (absent or empty): wheels, mamba-ssm's sdist, the store of `replays`
    encoded with the default EncodingConfig, and `bundle.json` listing each file's sha256. Returns the manifest."""
    from melee_wm.data.store_writer import build_store
    from melee_wm.encoding.config import EncodingConfig

    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} is not empty: the bundle is written into a new folder")
    wheels, sources = out / WHEELS_DIR, out / SOURCES_DIR
    wheels.mkdir(parents=True)
    sources.mkdir()
    target = ("--python-version", TARGET_PYTHON, "--platform", TARGET_PLATFORM)
    _pip("download", "--only-binary=:all:", *target, "--no-deps", "-d", str(wheels), *WHEELS)
    _pip("wheel", "--no-deps", "-w", str(wheels), *SDIST_ONLY_WHEELS)
    impure = [p.name for p in wheels.glob("*.whl") if not p.name.endswith("-none-any.whl")]
    if impure:
        raise BundleError(f"{impure}: not pure-Python wheels; they would not install on the CUDA machine's Python")
    fetch_sdist("mamba-ssm", MAMBA_SSM_SDIST, MAMBA_SSM_SHA256, sources)
    # Small shards, so the device-resident gathers on the GPU cross shard boundaries as on a real store.
    store = build_store([replays], out / STORE_DIR, EncodingConfig(), shard_frames=STORE_SHARD_FRAMES, progress=False)
    files = {str(p.relative_to(out)): _sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    size = sum((out / name).stat().st_size for name in files)
    if size > MAX_BYTES:
        raise BundleError(f"{out}: {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB limit")
    manifest = {
        "format": BUNDLE_FORMAT,
        "bytes": size,
        "wheels": sorted(p.name for p in wheels.glob("*.whl")),
        "mamba_ssm_sdist": MAMBA_SSM_SDIST,
        "store": {"path": STORE_DIR, **store.manifest["counts"]},
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _extract_python_sources(sdist: Path, site: Path, package: str) -> int:
    """Extract `package`'s .py files (and its licence) from an sdist into `site`; returns the file count."""
    count = 0
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 3 or parts[1] != package or not member.isfile() or not member.name.endswith(".py"):
                continue
            dest = site.joinpath(*parts[1:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(member).read())
            count += 1
        licence = next((m for m in tar.getmembers() if Path(m.name).parts[1:] == ("LICENSE",)), None)
        if licence is not None:
            site.joinpath(package, "LICENSE").write_bytes(tar.extractfile(licence).read())
    return count


def install_bundle(bundle: Path) -> dict[str, Any]:
    """Check and install `bundle` offline into `bundle/site` (replaced); returns what was installed, the
    store's path and the `PYTHONPATH` entries the check's subprocesses need."""
    manifest_path = bundle / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path} not found: make the bundle with `python scripts/gpu_check.py --bundle DIR`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{manifest_path}: format {manifest.get('format')!r}, expected {BUNDLE_FORMAT}")
    for name, digest in manifest["files"].items():
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"{path}: listed in {MANIFEST} but missing")
        if _sha256(path) != digest:
            raise BundleError(f"{path}: sha256 differs from {MANIFEST} (a damaged or changed bundle)")
    site = bundle / SITE_DIR
    shutil.rmtree(site, ignore_errors=True)
    wheels = [str(bundle / WHEELS_DIR / w) for w in manifest["wheels"]]
    _pip("install", "--no-index", "--no-deps", "--no-compile", "--quiet", "--target", str(site), *wheels)
    mamba = "installed on this machine"
    if importlib.util.find_spec("mamba_ssm") is None:  # the bundle's site folder is not on this process's path
        count = _extract_python_sources(bundle / SOURCES_DIR / manifest["mamba_ssm_sdist"], site, "mamba_ssm")
        mamba = f"bundle: {count} Python files of {manifest['mamba_ssm_sdist']} (no compiled extensions)"
    return {"site": str(site), "store": str(bundle / manifest["store"]["path"]), "mamba_ssm": mamba}
