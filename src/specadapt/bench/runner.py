"""`specadapt bench`: every method on the same prompts, side by side in one process, with task accuracy.

Protocol (Spec-Bench's, see the design anchors): batch 1, chat template, the same
token ids for every method. For each example and repeat every method runs once,
in an order rotated per example so that slow drift of the machine spreads over
the methods; datasets alternate example by example. Warm-up generations (not
recorded) run first. Tokens are counted the same way for every method: the
tokens generated (EOS included when a generation ends on it), timed with
``time.perf_counter`` around the whole call (prefill included).

Output folder (see :data:`FILES`): ``settings.json`` (the run's settings, with
``--dataset-file`` paths relative to the folder, and environment),
``records.jsonl`` (one line per generation, appended and flushed as it finishes,
so an interrupted run resumes where it stopped), ``summary.json``, ``report.md``
and PNG plots (:mod:`specadapt.bench.report`). Running the same
command again resumes; a folder holding other settings or other files is only
reused with ``overwrite=True``, which deletes the files its manifest (``.specadapt-manifest.json``,
:class:`specadapt.io.OutputFolder`) says this module wrote, and nothing else; a folder without that
manifest is never written to.

Each method label has one policy instance for the whole run, so a method with
``scope=shared`` keeps its statistics across prompts (not across a resume).

Lossy methods (and target-only, whose value is the reference level: bf16 rounding
alone makes it < 1) also get ``target_agreement``: the fraction of generated tokens
equal to the target's argmax after the same prefix, from one teacher-forced target
pass (not timed).

Splits: built-in datasets are read from their ``test`` split by default
(``split``; :mod:`specadapt.bench.splits`), and every record carries the
example's ``split`` and ``index`` in its dataset, and the ``session`` (one id per
process) that measured it, so a report can show which prompts a resumed run
measured partly in one process and partly in another. The method order of an
example is rotated by its position in the run, so a resumed run keeps the
rotation an uninterrupted one would have had.

An interrupted run (Ctrl-C) still writes summary.json, report.md and plots from the
generations finished so far, marked partial; the same command resumes it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import time
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable

from ..errors import SpecAdaptError
from ..io import OutputFolder, read_json, read_jsonl_tolerant, write_json_atomic
from ..models.settings import ModelSettings
from .datasets import DATASET_NAMES, Example, load_dataset, load_dataset_file
from .splits import ALL, check_split
from .report import BASELINE, summarize, write_report
from .scoring import score_example

SETTINGS_FILE = "settings.json"
RECORDS_FILE = "records.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
PLOT_FILES = ("speedup.png", "tradeoff.png", "acceptance_by_position.png")
FILES = (SETTINGS_FILE, RECORDS_FILE, SUMMARY_FILE, REPORT_FILE, *PLOT_FILES)
WARMUP_TOKENS = 16


def parse_dataset_caps(text: str) -> dict[str, int]:
    """``'mt-bench=128,gsm8k=384'`` -> ``{"mt-bench": 128, "gsm8k": 384}``."""
    caps: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, value = part.partition("=")
        if not eq or not value.strip().isdigit():
            raise SpecAdaptError(
                f"--dataset-max-new-tokens takes DATASET=N pairs separated by commas (e.g. 'mt-bench=128'), got {part!r}."
            )
        caps[name.strip()] = int(value)
    return caps


def split_methods(text: str) -> list[str]:
    """``'a, b:x=1'`` -> ``["a", "b:x=1"]``: split on ``;`` if there is one (a method's settings may contain
    commas), else on ``,``."""
    return [m.strip() for m in text.split(";" if ";" in text else ",") if m.strip()]


@dataclass
class BenchSettings(ModelSettings):
    """Everything that defines a run; resuming requires the same values, except ``limit``
    (a larger one extends the run, a smaller one reports on the first examples).

    The metadata's help texts are the ``specadapt bench`` options' (:mod:`specadapt.cli_options`)."""

    methods: list[str] = field(
        default_factory=lambda: ["autoregressive", "fixed:4", "heuristic", "adaedl", "adasd-stop", "adasd"],
        metadata={"help": "Methods, comma-separated (use ';' if a method's settings contain commas); autoregressive is "
                          "always added as the baseline.", "parse": split_methods},
    )
    datasets: list[str] = field(
        default_factory=lambda: ["humaneval", "gsm8k", "mt-bench"],
        metadata={"help": f"Built-in datasets: {', '.join(DATASET_NAMES)} (comma-separated; '' for none)."},
    )
    dataset_files: list[str] = field(default_factory=list, metadata={
        "help": "A JSONL of your own prompts (repeatable): 'prompt' or 'messages' per line.", "flag": "--dataset-file",
        "repeat": True})
    limit: int | None = field(default=10, metadata={"help": "First N examples of each dataset (0 = all)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Maximum new tokens per generation."})
    dataset_max_new_tokens: dict[str, int] = field(default_factory=dict, metadata={
        "help": "Per-dataset caps overriding --max-new-tokens, e.g. 'mt-bench=128,gsm8k=384' ('file' for --dataset-file "
                "prompts).", "parse": parse_dataset_caps})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy."})
    top_k: int = field(default=0, metadata={"help": "Keep only the k most likely tokens (0 = off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1]."})
    repeats: int = field(default=1, metadata={
        "help": "Runs of every method on every example (the speedup's spread is across repeats)."})
    warmup: int = field(default=1, metadata={"help": "Untimed warm-up generations per method."})
    seed: int = field(default=0, metadata={"help": "Sampling seed (repeat r uses seed + r)."})
    gsm8k_shots: int = field(default=0, metadata={"help": "GSM8K prompt: 0 = zero-shot chat, 8 = 8-shot."})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)."})
    exec_timeout_s: float = field(default=10.0, metadata={
        "help": "Seconds allowed to run one HumanEval solution.", "flag": "--exec-timeout"})
    split: str = field(default="test", metadata={
        "help": "Split of the built-in datasets: test (the default, what results report), tune, train, or all "
                "(every example, as runs before splits did); --dataset-file prompts are used whole."})

    def __post_init__(self) -> None:
        self.methods = parse_methods(self.methods)
        check_split(self.split)
        unknown = [d for d in self.datasets if d not in DATASET_NAMES]
        if unknown:
            raise SpecAdaptError(f"unknown dataset {unknown[0]!r}; known: {', '.join(DATASET_NAMES)} (or --dataset-file).")
        if not self.datasets and not self.dataset_files:
            raise SpecAdaptError("no datasets: name one with --datasets or give a JSONL with --dataset-file.")
        self.dataset_files = [str(f) for f in self.dataset_files]
        for name, value, low in (("limit", self.limit, 1), ("max_new_tokens", self.max_new_tokens, 1),
                                 ("repeats", self.repeats, 1), ("warmup", self.warmup, 0)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise SpecAdaptError(f"{name.replace('_', '-')} must be an integer >= {low}, got {value!r}.")
        named = set(self.datasets) | ({"file"} if self.dataset_files else set())
        for name, value in self.dataset_max_new_tokens.items():
            if name not in named:
                raise SpecAdaptError(
                    f"a max-new-tokens cap for {name!r}, which this run does not benchmark (its datasets: "
                    f"{', '.join(sorted(named))}; your own files are 'file')."
                )
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecAdaptError(f"the max-new-tokens cap for {name} must be an integer >= 1, got {value!r}.")
        if self.threads is not None and self.threads < 1:
            raise SpecAdaptError(f"threads must be >= 1, got {self.threads}.")
        if not math.isfinite(self.exec_timeout_s) or self.exec_timeout_s <= 0:
            raise SpecAdaptError(f"exec timeout must be a finite number of seconds > 0, got {self.exec_timeout_s}.")
        from ..engine import RequestConfig

        RequestConfig(self.max_new_tokens, self.temperature, self.top_k, self.top_p)  # validates sampling
        super().__post_init__()

    def max_new_tokens_for(self, dataset: str) -> int:
        return self.dataset_max_new_tokens.get(dataset, self.max_new_tokens)

    @property
    def needs_draft(self) -> bool:
        from ..methods import make_method

        return any(make_method(m).needs_draft for m in self.methods)


def parse_methods(methods: str | Iterable[str]) -> list[str]:
    """Method strings, validated; the target-only baseline is added first when missing.

    A string is split by :func:`split_methods`."""
    from ..methods import make_method

    labels = split_methods(methods) if isinstance(methods, str) else [m.strip() for m in methods if m.strip()]
    for label in labels:
        make_method(label)  # unknown names and bad settings fail here, listing what exists
    if len(set(labels)) != len(labels):
        raise SpecAdaptError("--methods lists a method twice.")
    if BASELINE not in labels:
        labels.insert(0, BASELINE)  # speedup and accuracy change are measured against it
    return labels


# ----------------------------------------------------------------------------
# the output folder
# ----------------------------------------------------------------------------


# Settings a resumed run may change: which examples it covers, not how each is measured.
RESUMABLE_CHANGES = ("limit",)
# What a setting meant in runs recorded before it existed, where that differs from today's default:
# those runs took the first examples of the whole dataset, and had float models (whatever
# zoo.DEFAULT_DRAFT_QUANT says today, an old bf16 run is never resumed with a quantized draft).
LEGACY_DEFAULTS = {"split": ALL, "draft_quant": "none", "draft_group_size": None, "target_quant": "none",
                   "target_group_size": None, "float32_copies": False}


def _relative_to(out: Path, path: str | Path) -> str:
    """``path`` relative to the output folder: results name no folder of this machine, and a run
    moved together with its data files still resumes."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(out).resolve())
    except ValueError:  # on another Windows drive there is no relative path
        return str(Path(path).resolve())


def recorded_settings(settings: BenchSettings, out: Path) -> dict:
    """The settings as ``settings.json`` holds them (dataset files relative to ``out``)."""
    recorded = asdict(settings)
    recorded["dataset_files"] = [_relative_to(out, f) for f in settings.dataset_files]
    return recorded


def load_settings(out: Path) -> BenchSettings:
    """The settings of the run in ``out``, its dataset files found relative to ``out``."""
    stored = _stored_settings(out)
    stored["dataset_files"] = [str(Path(out) / f) for f in stored.get("dataset_files", [])]
    for name, value in LEGACY_DEFAULTS.items():  # a run recorded before the setting existed
        stored.setdefault(name, value)
    return BenchSettings(**stored)


def _relative_paths(value, out: Path):
    """``value`` (JSON-like) with every absolute path of an existing file or folder made relative to ``out``
    (a method's settings may hold one, e.g. the resolved acceptance-head folder)."""
    if isinstance(value, dict):
        return {k: _relative_paths(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_paths(v, out) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and os.path.exists(value):
        return _relative_to(out, value)
    return value


def prepare_output(out: Path, settings: BenchSettings, overwrite: bool) -> list[dict]:
    """Create or reopen the output folder; return the records of a run being resumed.

    Everything is checked before anything is written: a folder is reused only if its manifest says
    ``specadapt bench`` wrote it, and ``overwrite`` deletes only the files that manifest names."""
    folder = OutputFolder(out, "bench")
    legacy = _legacy_run_files(folder)
    manifest = {"files": legacy} if legacy is not None else folder.check(FILES)
    if manifest is not None and not overwrite and SETTINGS_FILE in manifest["files"] \
            and (folder.path / SETTINGS_FILE).exists():
        stored = _stored_settings(folder.path)
        # Runs written before dataset files were recorded relative to the folder hold absolute paths: out / abs = abs.
        stored["dataset_files"] = [_relative_to(out, out / f) for f in stored.get("dataset_files", [])]
        defaults = {f.name: f.default_factory() if f.default is MISSING else f.default for f in fields(BenchSettings)
                    if f.default is not MISSING or f.default_factory is not MISSING}
        defaults.update(LEGACY_DEFAULTS)
        # A setting newer than the stored run counts as its default there, so such runs still resume.
        differ = [k for k, v in recorded_settings(settings, out).items()
                  if k not in RESUMABLE_CHANGES and stored.get(k, defaults.get(k)) != v]
        if differ:
            raise SpecAdaptError(
                f"--out {out} holds a run with other settings ({', '.join(differ)}); "
                "use the same settings to resume it, another --out, or --overwrite to replace it."
            )
        if legacy is not None:
            folder.adopt(FILES)  # it writes the rest of its files next
        # Cut a line an interruption left unfinished, so appends start on a fresh line.
        return read_jsonl_tolerant(Path(out) / RECORDS_FILE, repair=True)
    if legacy is not None:
        folder.adopt(FILES)
    if manifest is not None:
        # --overwrite, or a run that stopped before it wrote its settings: start again.
        folder.remove(*FILES)
    folder.claim(files=FILES)
    return []


def _legacy_run_files(folder: OutputFolder) -> list[str] | None:
    """For a run written before bench kept a manifest (e.g. the committed ones under benchmarks/results): the
    bench files it holds, recognised by a settings.json of bench's own structure next to records.jsonl; None for
    anything else. Other files in such a folder (a replay.json, notes) are never claimed, so never deleted."""
    path = folder.path
    if not path.is_dir() or folder.manifest_path.exists() or not (path / RECORDS_FILE).is_file():
        return None
    try:
        stored = read_json(path / SETTINGS_FILE)
    except (OSError, ValueError):
        return None
    if not (isinstance(stored, dict) and isinstance(stored.get("settings"), dict) and "target" in stored["settings"]
            and isinstance(stored.get("methods"), dict) and isinstance(stored.get("environment"), dict)):
        return None
    return [name for name in FILES if (path / name).exists()]


def _stored_settings(out: Path) -> dict:
    """The ``settings`` object of ``out/settings.json``; a clear error if it is not one this module wrote."""
    path = Path(out) / SETTINGS_FILE
    try:
        stored = read_json(path)["settings"]
        if not isinstance(stored, dict):
            raise TypeError("'settings' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc)
        raise SpecAdaptError(
            f"{path} is not a readable benchmark settings file ({reason}); rerun with --overwrite to start the "
            "run again in this folder, or choose another --out."
        ) from None
    return stored


# What makes two machines different kinds for a benchmark (a CPU without native bf16 runs other kernels).
MACHINE_KEYS = ("cpu", "cpu_capability", "native_bf16")


def check_same_machine(out: Path) -> None:
    """Refuse to resume on another kind of machine than the one the run started on: its speedups would
    average two machines' cost ratios in one table. Keys a run did not record are not compared."""
    from ..models.hardware import machine

    stored = read_json(Path(out) / SETTINGS_FILE).get("environment") or {}
    here = machine()
    differ = [f"{k} {stored[k]!r} there, {here[k]!r} here" for k in MACHINE_KEYS if k in stored and stored[k] != here[k]]
    if differ:
        raise SpecAdaptError(
            f"--out {out} holds a run measured on another machine ({'; '.join(differ)}); resuming it here would mix "
            "two machines' speeds in one report. Resume it on such a machine, or use another --out."
        )


def read_records(out: Path) -> list[dict]:
    """The generations recorded so far; a line cut short by an interruption is left out (that generation runs again)."""
    return read_jsonl_tolerant(Path(out) / RECORDS_FILE)


def target_outputs(out: Path, settings: "BenchSettings", tokenizer, eos_ids: Iterable[int] = ()) -> list[tuple[Example, dict, list[int]]]:
    """A greedy run's examples that have a target-only record (repeat 0), each with that record and its output
    re-tokenised; where it ended at EOS, one of ``eos_ids`` is appended (the tokenizer's own when it is one), so the
    ids are what the target emitted (none appended without ``eos_ids``)."""
    eos_ids = list(eos_ids)
    eos_id = (tokenizer.eos_token_id if tokenizer.eos_token_id in eos_ids else eos_ids[0]) if eos_ids else None
    records = {(r["dataset"], r["example_id"]): r for r in read_records(out) if r["method"] == BASELINE and r["repeat"] == 0}
    found = []
    for example in load_examples(settings):
        record = records.get((example.dataset, example.id))
        if record is None:
            continue
        ids = tokenizer.encode(record["text"], add_special_tokens=False)
        if eos_id is not None and record["finish_reason"] == "eos":
            ids.append(eos_id)
        found.append((example, record, ids))
    return found


def environment(decoder) -> dict:
    """Versions and hardware, recorded with every result."""
    import torch
    import transformers

    from .. import __version__
    from ..models.hardware import has_float32_copies, machine

    device = decoder.target.device
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "transformers": transformers.__version__,
        "specadapt": __version__,
        **machine(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(decoder.target.dtype).replace("torch.", ""),
        "target_float32_copies": has_float32_copies(decoder.target),
        "draft_head_ids": decoder.engine.draft_setup["draft_head_ids"],
    }


# ----------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------


def load_examples(settings: BenchSettings) -> list[Example]:
    """All examples, datasets interleaved example by example (drift spreads over datasets)."""
    groups = [load_dataset(d, settings.limit, settings.split, gsm8k_shots=settings.gsm8k_shots) for d in settings.datasets]
    # Lines without ids are numbered per file: the first file's "file/<n>" (as runs of one file always were),
    # the second's "file2/<n>", and so on, so two such files never collide.
    groups += [load_dataset_file(f, settings.limit, "file" if i == 0 else f"file{i + 1}")
               for i, f in enumerate(settings.dataset_files)]
    examples = []
    for i in range(max((len(g) for g in groups), default=0)):
        examples += [g[i] for g in groups if i < len(g)]
    if not examples:
        raise SpecAdaptError("the selected datasets hold no examples.")
    ids = [(e.dataset, e.id) for e in examples]
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise SpecAdaptError(
            f"two examples of dataset {twice[0]!r} share the id {twice[1]!r} (two --dataset-file lines, or two files); "
            "give every line of --dataset-file a unique id."
        )
    return examples


def record_key(dataset: str, example_id: str, method: str, repeat: int) -> tuple:
    return (dataset, example_id, method, repeat)


def run_bench(
    settings: BenchSettings,
    out: Path,
    *,
    overwrite: bool = False,
    decoder=None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    time_limit_s: float | None = None,
) -> dict:
    """Run (or resume) a benchmark into ``out``; return the summary. ``decoder`` (a
    :class:`~specadapt.api.SpecDecoder`) skips loading models, e.g. in tests.

    ``time_limit_s``: start no generation after this many seconds (counted from the
    call); the summary and report then cover what finished, marked partial, and the
    same call resumes."""
    from tqdm.auto import tqdm

    from ..engine import RequestConfig
    from ..methods import make_method

    started = time.perf_counter()
    # One id per call (time, process, random part): a resume in the same process is still another session.
    session = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    out = Path(out)
    examples = load_examples(settings)
    position = {(e.dataset, e.id): i for i, e in enumerate(examples)}
    wanted = {(e.dataset, e.id) for e in examples}
    # Records of examples beyond a reduced --limit stay on disk (a larger limit uses them again).
    done_records = [r for r in prepare_output(out, settings, overwrite) if (r["dataset"], r["example_id"]) in wanted]
    done = {record_key(r["dataset"], r["example_id"], r["method"], r["repeat"]) for r in done_records}
    todo = [
        (e, r) for e in examples for r in range(settings.repeats)
        if any(record_key(e.dataset, e.id, m, r) not in done for m in settings.methods)
    ]
    if (out / SETTINGS_FILE).exists():  # a run being resumed (an overwritten one's files are gone)
        check_same_machine(out)
    if done_records:
        log(f"resuming {out}: {len(done)} generations done, {len(todo)} example-repeats to go")

    if decoder is None:
        decoder = _load_decoder(settings, log)
    loaded = decoder.engine.target_quant["target_quant"]
    if loaded != settings.target_quant:  # a given decoder must be the model the results will be labelled with
        raise SpecAdaptError(f"the decoder's target is quantized {loaded!r} but the settings say target_quant "
                             f"{settings.target_quant!r}; pass target_quant={loaded!r}.")
    methods = {label: make_method(label) for label in settings.methods}
    params = RequestConfig(settings.max_new_tokens, settings.temperature, settings.top_k, settings.top_p).sampling
    described = {label: _relative_paths(m.describe(params), out) for label, m in methods.items()}
    settings_path = out / SETTINGS_FILE
    if not settings_path.exists():
        write_json_atomic(settings_path, {"settings": recorded_settings(settings, out), "methods": described,
                                          "environment": environment(decoder)}, indent=1)
    else:
        stored = read_json(settings_path)
        if stored["settings"].get("limit") != settings.limit:
            log(f"--limit changed from {stored['settings'].get('limit')} to {settings.limit}: "
                f"the report covers {len(examples)} examples per repeat")
            stored["settings"]["limit"] = settings.limit
            write_json_atomic(settings_path, stored, indent=1)

    encoded = {(e.dataset, e.id): decoder.encode(e.messages) for e, _ in todo}
    engine = decoder.engine

    def generate(label: str, ids: list[int], max_new_tokens: int, seed: int, stop: tuple[str, ...] = ()):
        config = RequestConfig(max_new_tokens, settings.temperature, settings.top_k, settings.top_p, seed, stop)
        t0 = time.perf_counter()
        result = engine.generate([ids], methods[label], config)[0]
        return result, time.perf_counter() - t0

    if todo and settings.warmup:
        first = encoded[(todo[0][0].dataset, todo[0][0].id)]
        for label in tqdm(settings.methods * settings.warmup, desc="warm-up", leave=False, disable=not progress):
            generate(label, first, min(WARMUP_TOKENS, settings.max_new_tokens_for(todo[0][0].dataset)), settings.seed)

    def finish(complete: bool) -> dict:
        summary = summarize(done_records, settings.methods, described)
        summary["split"] = settings.split
        summary["target_quant"] = settings.target_quant  # never to be mixed with float-target results
        summary["example_indices"] = {d: [e.index for e in examples if e.dataset == d and e.index is not None]
                                      for d in settings.datasets}
        expected = len(examples) * settings.repeats * len(settings.methods)
        summary["progress"] = {"complete": complete, "generations": len(done_records), "expected": expected}
        write_json_atomic(out / SUMMARY_FILE, summary, indent=1)
        write_report(out, read_json(settings_path), summary)
        return summary

    score_cache: dict[tuple, dict | None] = {}
    total = sum(1 for e, r in todo for m in settings.methods if record_key(e.dataset, e.id, m, r) not in done)
    bar = tqdm(total=total, desc="bench", unit="gen", disable=not progress)
    try:
        with open(out / RECORDS_FILE, "a", encoding="utf-8") as sink:
            for example, repeat in todo:
                ids = encoded[(example.dataset, example.id)]
                # By the example's place in the whole run, not in what is left: a resume keeps the rotation.
                shift = (position[(example.dataset, example.id)] * settings.repeats + repeat) % len(settings.methods)
                order = settings.methods[shift:] + settings.methods[:shift]
                for place, label in enumerate(order):
                    if record_key(example.dataset, example.id, label, repeat) in done:
                        continue
                    if time_limit_s is not None and time.perf_counter() - started > time_limit_s:
                        raise _TimeUp
                    bar.set_postfix_str(f"{example.id} {label}", refresh=False)
                    result, wall = generate(label, ids, settings.max_new_tokens_for(example.dataset), settings.seed + repeat,
                                            example.stop)
                    key = (example.dataset, example.id, result.text)
                    if key not in score_cache:  # lossless methods often repeat the same text
                        score_cache[key] = score_example(example, result.text, timeout_s=settings.exec_timeout_s)
                    record = make_record(example, label, repeat, place, ids, result, wall, score_cache[key])
                    record["session"] = session
                    if not result.lossless or label == BASELINE:
                        record["target_agreement"] = target_agreement(decoder.target, ids, result.token_ids)
                    sink.write(json.dumps(record) + "\n")
                    sink.flush()
                    done_records.append(record)
                    bar.update()
    except _TimeUp:
        bar.close()
        log(f"time limit reached: {len(done_records)} generations saved in {out / RECORDS_FILE} (partial report "
            "written); run the same command to resume.")
        return finish(complete=False)
    except KeyboardInterrupt:
        bar.close()
        if done_records:
            finish(complete=False)
        log(f"interrupted: {len(done_records)} generations saved in {out / RECORDS_FILE} (partial report written); "
            "run the same command to resume.")
        raise
    bar.close()
    return finish(complete=True)


class _TimeUp(Exception):
    """Raised inside the generation loop when ``time_limit_s`` has passed."""


def target_agreement(target, ids: list[int], tokens: list[int]) -> float | None:
    """Teacher-forced agreement: the fraction of ``tokens`` equal to the target's argmax after the same prefix."""
    import torch

    if not tokens:
        return None
    seq = torch.tensor([list(ids) + list(tokens)], dtype=torch.long, device=target.device)
    with torch.inference_mode():
        logits = target(seq).logits[0, len(ids) - 1 : -1]
    return (logits.argmax(-1) == seq[0, len(ids) :]).float().mean().item()


def make_record(example: Example, method: str, repeat: int, order: int, ids: list[int], result, wall_s: float,
                score: dict | None) -> dict:
    s = result.stats
    tokens = len(result.token_ids)
    return {
        "dataset": example.dataset,
        "example_id": example.id,
        "split": example.split,
        "index": example.index,
        "category": example.category,
        "task": example.task,
        "method": method,
        "lossless": result.lossless,
        "repeat": repeat,
        "order": order,
        "prompt_tokens": len(ids),
        "tokens": tokens,
        "wall_s": wall_s,
        "tokens_per_s": tokens / wall_s if wall_s > 0 else None,
        "finish_reason": result.finish_reason,
        "rounds": s.rounds,
        "drafted": s.drafted,
        "accepted": s.accepted,
        "position_reached": s.position_reached,
        "position_accepted": s.position_accepted,
        "draft_time_s": s.draft_time_s,
        "target_time_s": s.target_time_s,
        "text": result.text,
        "score": score,
    }


def _load_decoder(settings: BenchSettings, log: Callable[[str], None]):
    import torch
    from transformers.utils import logging as hf_logging

    from ..models.hardware import compile_fused_products

    if settings.threads:
        torch.set_num_threads(settings.threads)
    hf_logging.disable_progress_bar()
    needs_draft = settings.needs_draft
    draft = settings.draft if needs_draft else None
    t0 = time.perf_counter()
    decoder = settings.load(needs_draft)
    compile_fused_products(decoder.target, decoder.draft)  # not inside a timed generation
    log(f"loaded {settings.target}" + (f" + {draft}" if draft else "") + f" in {time.perf_counter() - t0:.1f} s "
        f"({settings.dtype}, {decoder.target.device}, {torch.get_num_threads()} threads)")
    return decoder
