"""Sample replays: verifying a folder, the env-var and cache paths, the index URL, and a real fetch."""

import hashlib
import io
import os
import shutil
import tarfile
import urllib.error
from pathlib import Path

import pytest
from pip._internal.models.index import PyPI

from melee_wm import samples
from melee_wm.samples import SAMPLES, SAMPLES_ENV, SampleReplaysError


def _no_network(*args, **kwargs):
    raise AssertionError("the network must not be used here")


@pytest.fixture
def offline(monkeypatch):
    """Make any index query or download fail the test."""
    monkeypatch.setattr(samples, "_index_sdists", _no_network)
    monkeypatch.setattr(samples, "_download", _no_network)


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """The verified sample folder the test run was given (`MELEE_WM_SAMPLES`, else the cache)."""
    return samples.sample_dir()


@pytest.fixture
def copy_dir(real_dir, tmp_path) -> Path:
    folder = tmp_path / "copy"
    folder.mkdir()
    for s in SAMPLES:
        shutil.copyfile(real_dir / s.name, folder / s.name)
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_env_folder_is_used_and_verifies(offline):
    env = os.environ.get(SAMPLES_ENV)
    if not env:
        pytest.skip(f"{SAMPLES_ENV} is not set for this run")
    folder = samples.sample_dir()
    assert folder == Path(env).resolve()
    assert samples.verify_dir(folder) == []
    paths = samples.sample_paths()
    assert [p.name for p in paths] == sorted(s.name for s in SAMPLES)
    assert [_sha256(p) for p in paths] == [s.sha256 for s in SAMPLES]


def test_table_matches_sources_md_naming():
    assert len(SAMPLES) == 6
    assert len({s.name for s in SAMPLES}) == 6
    assert {s.version for s in SAMPLES} == set(samples.SDIST_SHA256)
    for s in SAMPLES:
        assert s.name == f"peppi-py-{s.version}__{s.member.replace('/', '_')}"


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_env_folder_with_bad_file_names_it(damage, copy_dir, monkeypatch, offline):
    bad = SAMPLES[2].name
    if damage == "corrupt":
        data = bytearray((copy_dir / bad).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (copy_dir / bad).write_bytes(bytes(data))
    else:
        (copy_dir / bad).unlink()
    problems = samples.verify_dir(copy_dir)
    assert len(problems) == 1 and problems[0].startswith(bad)
    assert ("missing" in problems[0]) == (damage == "missing")
    monkeypatch.setenv(SAMPLES_ENV, str(copy_dir))
    with pytest.raises(SampleReplaysError) as err:
        samples.sample_dir()
    message = str(err.value)
    assert bad in message and str(copy_dir) in message
    assert all(s.name not in message for s in SAMPLES if s.name != bad)


def test_env_folder_missing_is_a_clear_error(tmp_path, monkeypatch, offline):
    missing = tmp_path / "no_such_folder"
    monkeypatch.setenv(SAMPLES_ENV, str(missing))
    with pytest.raises(SampleReplaysError, match="not a folder") as err:
        samples.sample_dir()
    assert str(missing) in str(err.value) and SAMPLES_ENV in str(err.value)


def test_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert samples.default_cache_dir() == tmp_path / "xdg" / "melee_wm" / "samples"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert samples.default_cache_dir() == tmp_path / "home" / ".cache" / "melee_wm" / "samples"


def test_filled_cache_is_used_without_network(copy_dir, tmp_path, monkeypatch, offline):
    monkeypatch.delenv(SAMPLES_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = samples.default_cache_dir()
    shutil.copytree(copy_dir, cache)
    assert samples.sample_dir() == cache
    assert samples.fetch_samples(cache) == cache


def test_no_env_no_cache_no_fetch_names_both_options(tmp_path, monkeypatch, offline):
    monkeypatch.delenv(SAMPLES_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(SampleReplaysError) as err:
        samples.sample_dir(fetch=False)
    message = str(err.value)
    assert SAMPLES_ENV in message and str(samples.default_cache_dir()) in message


def test_failed_fetch_names_both_options_and_the_cause(tmp_path, monkeypatch):
    def unreachable(index):
        raise urllib.error.URLError("index unreachable in this test")

    monkeypatch.delenv(SAMPLES_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(samples, "_index_sdists", unreachable)
    with pytest.raises(SampleReplaysError) as err:
        samples.sample_dir()
    message = str(err.value)
    assert SAMPLES_ENV in message and str(samples.default_cache_dir()) in message
    assert "index unreachable in this test" in message


def test_index_listing_must_match_pinned_sdist_hash(tmp_path, monkeypatch):
    listing = {samples.sdist_name(v): (f"https://index.invalid/{v}", "0" * 64) for v in samples.SDIST_SHA256}
    monkeypatch.setattr(samples, "_index_sdists", lambda index: listing)
    monkeypatch.setattr(samples, "_download", _no_network)
    with pytest.raises(SampleReplaysError, match=r"peppi_py-0\.8\.0\.tar\.gz"):
        samples.fetch_samples(tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def _tarball(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def test_extract_takes_only_named_members_and_checks_them(real_dir, tmp_path):
    sample = next(s for s in SAMPLES if s.version == "0.8.6")
    prefix = "peppi_py-0.8.6"
    good = (real_dir / sample.name).read_bytes()
    sdist = _tarball(
        tmp_path / "peppi_py-0.8.6.tar.gz",
        {f"{prefix}/{sample.member}": good, f"{prefix}/other.slp": b"x", "../escape.txt": b"x"},
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    samples._extract(sdist, [sample], dest)
    assert [p.name for p in dest.iterdir()] == [sample.name]
    assert _sha256(dest / sample.name) == sample.sha256
    assert not (tmp_path / "escape.txt").exists()

    bad = _tarball(tmp_path / "bad" / "peppi_py-0.8.6.tar.gz", {}, {f"{prefix}/{sample.member}": "/etc/hosts"})
    with pytest.raises(SampleReplaysError, match="not a regular file"):
        samples._extract(bad, [sample], dest)
    wrong = _tarball(tmp_path / "wrong" / "peppi_py-0.8.6.tar.gz", {f"{prefix}/{sample.member}": good[:-1]})
    with pytest.raises(SampleReplaysError, match=sample.member):
        samples._extract(wrong, [sample], dest)
    assert _sha256(dest / sample.name) == sample.sha256


@pytest.fixture
def pip_config(tmp_path, monkeypatch):
    """Point pip at a config file of our own (no site or user files) and clear PIP_INDEX_URL."""
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    config = tmp_path / "pip.conf"
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    return config


def test_index_url_honours_pip_index_url(pip_config, monkeypatch):
    pip_config.write_text("[global]\nindex-url = https://from-config.invalid/simple\n")
    monkeypatch.setenv("PIP_INDEX_URL", "https://from-env.invalid/pypi/simple")
    assert samples.index_url() == "https://from-env.invalid/pypi/simple/"


def test_index_url_from_pip_config(pip_config):
    pip_config.write_text("[global]\nindex-url = https://from-config.invalid/simple/\n")
    assert samples.index_url() == "https://from-config.invalid/simple/"


def test_index_url_defaults_to_pips_default(monkeypatch):
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    assert samples.index_url() == PyPI.simple_url.rstrip("/") + "/"


@pytest.mark.network
def test_fetch_from_index_then_no_op(tmp_path, monkeypatch):
    downloads = []
    real_download = samples._download

    def counting(url, path, progress):
        downloads.append(path.name)
        return real_download(url, path, progress)

    monkeypatch.setattr(samples, "_download", counting)
    dest = samples.fetch_samples(tmp_path / "samples")
    assert sorted(downloads) == sorted(samples.sdist_name(v) for v in samples.SDIST_SHA256)
    assert samples.verify_dir(dest) == []
    assert [_sha256(dest / s.name) for s in SAMPLES] == [s.sha256 for s in SAMPLES]
    assert sorted(p.name for p in dest.iterdir()) == sorted(s.name for s in SAMPLES)

    mtimes = [(dest / s.name).stat().st_mtime_ns for s in SAMPLES]
    monkeypatch.setattr(samples, "_index_sdists", _no_network)
    monkeypatch.setattr(samples, "_download", _no_network)
    assert samples.fetch_samples(dest) == dest
    assert [(dest / s.name).stat().st_mtime_ns for s in SAMPLES] == mtimes
