"""The six sample replays: find them in a folder, or fetch them from the peppi-py sdists on the package index.

The files ship inside three pinned peppi-py source distributions. We ask the index's simple API (PEP 691
JSON) for each sdist's URL and sha256, download it, check it against the pin, extract only the named
members and check their SHA-256 too. `MELEE_WM_SAMPLES` points at an existing copy instead.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import secrets
import ssl
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLES_ENV = "MELEE_WM_SAMPLES"
PROJECT = "peppi-py"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
TIMEOUT_S = 60.0
CHUNK = 1 << 20


class SampleReplaysError(RuntimeError):
    """The sample replays could not be found or fetched."""


# What a failed fetch can raise: network/TLS/disk (OSError), broken HTTP, bad JSON/listing, bad tarball.
FETCH_ERRORS = (
    OSError,
    http.client.HTTPException,
    ValueError,
    KeyError,
    tarfile.TarError,
    SampleReplaysError,
)


@dataclass(frozen=True)
class Sample:
    """One replay: its local file name, the sdist version it ships in, its path there, its SHA-256."""

    name: str
    version: str
    member: str
    sha256: str


# sha256 of each pinned sdist, learned from the index's simple API.
SDIST_SHA256 = {
    "0.8.0": "d685caec2ca609ab98575ef56b65a49b8fa404426c7d0669a68d0e66dcef440e",
    "0.8.1": "f6c761642f49f6da9855b859096e8e4ffc4cdb274b069f4aa001a9f07630fadd",
    "0.8.6": "1792fe5ccca3aa8f61ae5518590fbb8eb77ee14907a0771d724657cafcc1478c",
}

# Ordered by local file name (the order of sample_paths()).
SAMPLES = (
    Sample(
        "peppi-py-0.8.0__replays_game.slp",
        "0.8.0",
        "replays/game.slp",
        "803e6be137c34310f5185521699da4140132487ac6387700f8cb64fd6f4c4595",
    ),
    Sample(
        "peppi-py-0.8.0__replays_netplay.slp",
        "0.8.0",
        "replays/netplay.slp",
        "7eb41fb71113ce9c6cbbfd8312353cf31c7f0b6e0f6724757dbcc44481e12b71",
    ),
    Sample(
        "peppi-py-0.8.1__Game_20230702T014451.slp",
        "0.8.1",
        "Game_20230702T014451.slp",
        "0ef8c77b12d7a7017697d456a7157ce272c7503d65d45525f8e731bf28ef5f15",
    ),
    Sample(
        "peppi-py-0.8.1__game.slp",
        "0.8.1",
        "game.slp",
        "d7c7e4848a83c1f8633f47f35a28cfbea191e10318183936d3cbb56d4ee530e1",
    ),
    Sample(
        "peppi-py-0.8.1__in.slp",
        "0.8.1",
        "in.slp",
        "6b9d91cdc5bfc7ee5a9c8949252ed40cbfcfe5915a2e8de69806e2bbb598adfe",
    ),
    Sample(
        "peppi-py-0.8.6__tests_data_game.slp",
        "0.8.6",
        "tests/data/game.slp",
        "23f719cf96e1a6f82f5f1238a117638610f7ca879ad4b15f109b0ba58cd844c1",
    ),
)


def sdist_name(version: str) -> str:
    """File name of the peppi-py sdist of `version` on the index."""
    return f"peppi_py-{version}.tar.gz"


def default_cache_dir() -> Path:
    """Per-user cache folder: `$XDG_CACHE_HOME/melee_wm/samples`, else `~/.cache/melee_wm/samples`."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "melee_wm" / "samples"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _problem(folder: Path, sample: Sample) -> str | None:
    """What is wrong with `sample` in `folder`, or None when it is there with the pinned hash."""
    path = folder / sample.name
    if not path.is_file():
        return f"{sample.name}: missing"
    got = _sha256_file(path)
    if got != sample.sha256:
        return f"{sample.name}: sha256 {got}, expected {sample.sha256}"
    return None


def verify_dir(path: Path) -> list[str]:
    """Problems with the six sample files in `path` (missing or wrong SHA-256); an empty list means good."""
    path = Path(path)
    if not path.is_dir():
        return [f"{path}: not a folder"]
    return [p for s in SAMPLES if (p := _problem(path, s)) is not None]


def _pip_config(key: str) -> str | None:
    """Value of `key` (e.g. "global.index-url") in pip's configuration files, or None if unset."""
    from pip._internal.configuration import Configuration, ConfigurationError

    config = Configuration(isolated=False)
    config.load()
    try:
        return config.get_value(key)
    except ConfigurationError:
        return None


def index_url() -> str:
    """The package index pip uses: `$PIP_INDEX_URL`, else pip's `global.index-url`, else pip's default."""
    from pip._internal.models.index import PyPI

    url = os.environ.get("PIP_INDEX_URL") or _pip_config("global.index-url") or PyPI.simple_url
    return url.strip().rstrip("/") + "/"


def _ssl_context() -> ssl.SSLContext:
    """TLS context trusting pip's configured CA bundle (`$PIP_CERT`, `global.cert`), else the system's."""
    cafile = os.environ.get("PIP_CERT") or _pip_config("global.cert")
    return ssl.create_default_context(cafile=cafile)


def _open(url: str, accept: str | None = None):
    headers = {"Accept": accept} if accept else {}
    request = urllib.request.Request(url, headers=headers)
    context = _ssl_context() if url.startswith("https:") else None
    return urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context)


def _index_sdists(index: str) -> dict[str, tuple[str, str]]:
    """Map sdist file name -> (absolute URL, index-listed sha256) from the index's PEP 691 project page."""
    page = urllib.parse.urljoin(index, f"{PROJECT}/")
    try:
        with _open(page, accept=SIMPLE_JSON) as response:
            kind = response.headers.get_content_type()
            if kind != SIMPLE_JSON:
                raise SampleReplaysError(f"{page} answered {kind!r}, expected PEP 691 JSON ({SIMPLE_JSON})")
            listing = json.load(response)
    except OSError as e:
        raise SampleReplaysError(f"could not read the index page {page}: {e}") from e
    return {
        f["filename"]: (urllib.parse.urljoin(page, f["url"]), f["hashes"].get("sha256", "")) for f in listing["files"]
    }


def _download(url: str, path: Path, progress: bool) -> str:
    """Stream `url` into `path`; return the SHA-256 of what was written."""
    h = hashlib.sha256()
    start = time.perf_counter()
    with _open(url) as response, open(path, "wb") as out:
        while chunk := response.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
    if progress:
        size = path.stat().st_size / 1e6
        print(f"  {path.name}: {size:.1f} MB in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return h.hexdigest()


def _fetch_sdist(version: str, listing: dict[str, tuple[str, str]], folder: Path, progress: bool) -> Path:
    """Download the sdist of `version` into `folder`, checked against the pinned and index-listed sha256."""
    name = sdist_name(version)
    if name not in listing:
        raise SampleReplaysError(f"{name} is not listed on the index page of {PROJECT}")
    url, listed = listing[name]
    pinned = SDIST_SHA256[version]
    if listed != pinned:
        raise SampleReplaysError(f"index lists sha256 {listed!r} for {name}, pinned {pinned}")
    path = folder / name
    got = _download(url, path, progress)
    if got != pinned:
        raise SampleReplaysError(f"downloaded {name} has sha256 {got}, pinned {pinned}")
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary name next to `path`, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _extract(sdist: Path, samples: list[Sample], dest: Path) -> None:
    """Copy the `samples` members of `sdist` (and nothing else) into `dest`, each checked by SHA-256."""
    prefix = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist, "r:gz") as tar:
        for sample in samples:
            member = f"{prefix}/{sample.member}"
            try:
                info = tar.getmember(member)
            except KeyError:
                raise SampleReplaysError(f"{sdist.name} has no member {member}") from None
            if not info.isfile():
                raise SampleReplaysError(f"{sdist.name}: {member} is not a regular file")
            data = tar.extractfile(info).read()
            got = hashlib.sha256(data).hexdigest()
            if got != sample.sha256:
                raise SampleReplaysError(f"{sdist.name}: {member} has sha256 {got}, expected {sample.sha256}")
            _write_atomic(dest / sample.name, data)


def fetch_samples(dest: Path | None = None, *, force: bool = False, progress: bool = True) -> Path:
    """Download, verify and extract the six sample replays into `dest` (default: the cache folder).

    Files already in `dest` with the right SHA-256 are kept and their sdists not downloaded, unless `force`.
    """
    dest = Path(dest) if dest is not None else default_cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    todo = [s for s in SAMPLES if force or _problem(dest, s) is not None]
    log.info("sample replays in %s: %d present, %d to fetch", dest, len(SAMPLES) - len(todo), len(todo))
    if not todo:
        return dest
    versions = sorted({s.version for s in todo})
    index = index_url()
    if progress:
        names = ", ".join(sdist_name(v) for v in versions)
        print(f"fetching {len(todo)} of {len(SAMPLES)} sample replays from {names} via {index}", file=sys.stderr)
    listing = _index_sdists(index)
    with tempfile.TemporaryDirectory(prefix="melee_wm_sdists_") as tmp:
        for version in versions:
            sdist = _fetch_sdist(version, listing, Path(tmp), progress)
            _extract(sdist, [s for s in todo if s.version == version], dest)
    problems = verify_dir(dest)
    if problems:
        raise SampleReplaysError(f"after fetching, {dest} still has problems: " + "; ".join(problems))
    return dest


def _options(cache: Path) -> str:
    return (
        f"Either set {SAMPLES_ENV} to a folder holding the six files, or let melee_wm fetch them "
        f"from the package index into {cache} (needs network access to the index)."
    )


def sample_dir(*, fetch: bool = True) -> Path:
    """Folder holding the six verified sample replays: `$MELEE_WM_SAMPLES`, else the cache, fetched if needed.

    A set `MELEE_WM_SAMPLES` is never replaced by a download: if it is incomplete, that is an error.
    """
    cache = default_cache_dir()
    env = os.environ.get(SAMPLES_ENV)
    if env:
        folder = Path(env).expanduser().resolve()
        problems = verify_dir(folder)
        if problems:
            raise SampleReplaysError(
                f"{SAMPLES_ENV}={env} ({folder}) does not hold the six sample replays: "
                + "; ".join(problems)
                + ". Fix that folder, or unset the variable to use the cache "
                + f"{cache} (fetched from the package index)."
            )
        return folder
    problems = verify_dir(cache)
    if not problems:
        return cache
    if not fetch:
        raise SampleReplaysError(
            f"sample replays not found: {SAMPLES_ENV} is unset and the cache {cache} has problems: "
            + "; ".join(problems)
            + f". {_options(cache)}"
        )
    try:
        return fetch_samples(cache)
    except FETCH_ERRORS as e:
        raise SampleReplaysError(
            f"sample replays not found: {SAMPLES_ENV} is unset and fetching into {cache} failed "
            f"({type(e).__name__}: {e}). {_options(cache)}"
        ) from e


def sample_paths() -> list[Path]:
    """The six sample replay files, in a stable order (by file name)."""
    folder = sample_dir()
    return [folder / s.name for s in SAMPLES]
