"""Task scoring for ``specadapt bench``: GSM8K final-number match, HumanEval pass@1, output agreement.

- GSM8K: the final number of the model's answer (:func:`extract_gsm8k_answer`)
  compared numerically with the number after ``####`` in the reference.
- HumanEval: the code of the answer (:func:`extract_code`) plus the problem's
  tests, run in a subprocess (:func:`run_humaneval`). The subprocess gets a
  fresh temporary directory, resource limits, a minimal environment, no stdin,
  its own process group (killed when it times out or ends) and a patched
  ``socket`` module so that generated code cannot open connections. This keeps
  buggy model code from hanging the benchmark or touching the network by
  accident; it is best-effort and NOT a security sandbox against code written
  to escape it.
- Everything else: agreement with the target-only output, as exact match
  (:func:`exact_match`) and ROUGE-L F1 (:func:`text_overlap`), so that lossy
  methods can be judged.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpecAdaptError

if TYPE_CHECKING:
    from .datasets import Example

# ----------------------------------------------------------------------------
# GSM8K
# ----------------------------------------------------------------------------

# A number as models write it: optional sign (not when glued to a word, so the
# "-" of "5-3" is not a minus), optional "$", thousands separators, decimals.
# The trailing "." of "18." is not part of it because a decimal needs digits.
_NUMBER = re.compile(r"(?<!\w)(?P<sign>[-\u2212])?(?:\$\s?)?(?P<digits>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?)")
# "The answer is 42", "Final answer: $18.00", "the answer is **\boxed{7}**" ...
_ANSWER_PHRASE = re.compile(r"\banswers?\s*(?:is|was|would be|will be|=|:)\s*:?", re.IGNORECASE)
# What may stand between such a phrase and its number: markup, "$", "approximately".
_ANSWER_LEAD = re.compile(r"(?:[\s*_$\\(\[{:~\u2248]|boxed|text|approx(?:imately)?\.?|about)*", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{")


def _canonical(match: re.Match[str]) -> str:
    value = Decimal(match["digits"].replace(",", ""))
    if match["sign"]:
        value = -value
    if value == value.to_integral_value():
        return str(int(value))  # "18.00" -> "18", "-0" -> "0"
    return format(value.normalize(), "f")  # "0.50" -> "0.5"


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return _canonical(match) if match else None


def _boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}``, braces balanced (``\\boxed{\\frac{1}{2}}``)."""
    contents = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                contents.append(text[start:i])
                break
    return contents


def extract_gsm8k_answer(text: str) -> str | None:
    """The final number of a model's answer to a GSM8K problem, canonical (``"1,000.00"`` -> ``"1000"``).

    In order of preference: the number after the first ``####`` (the format the
    prompt asks for; the first one because few-shot prompted models may go on to
    invent a next question), the number right after the last "the answer is" /
    "answer:", the number in the last ``\\boxed{}``, the last number in the
    text. ``$``, thousands commas, a trailing ``.`` and units are dropped.
    None when the text has no number.
    """
    for part in text.split("####")[1:]:
        number = _first_number(part.split("\n", 1)[0])
        if number is not None:
            return number
    for phrase in reversed(list(_ANSWER_PHRASE.finditer(text))):
        lead = _ANSWER_LEAD.match(text, phrase.end())
        # The number must start right after the phrase and its markup, so that
        # "the answer is that she has 3 more" does not read as 3.
        match = _NUMBER.match(text, lead.end()) if lead else None
        if match:
            return _canonical(match)
    for content in reversed(_boxed_contents(text)):
        number = _first_number(content)
        if number is not None:
            return number
    matches = list(_NUMBER.finditer(text))
    return _canonical(matches[-1]) if matches else None


def gsm8k_reference(answer_field: str | float) -> str:
    """The canonical number after ``####`` in a GSM8K answer (a bare number such as ``"18"`` is accepted too)."""
    text = str(answer_field)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    number = _first_number(text.strip())
    if number is None:
        raise SpecAdaptError(
            f"GSM8K reference {str(answer_field)[-80:]!r} has no final number; "
            "give the dataset's answer text (ending in '#### <number>') or the number itself."
        )
    return number


def gsm8k_correct(completion: str, reference: str) -> bool:
    """Whether the completion's final number equals the reference's (numerically: "18.0" == "18")."""
    predicted = extract_gsm8k_answer(completion)
    if predicted is None:
        return False
    try:
        return Decimal(predicted) == Decimal(gsm8k_reference(reference))
    except InvalidOperation:
        return False


# ----------------------------------------------------------------------------
# HumanEval
# ----------------------------------------------------------------------------

# An opening fence with its language tag, then everything up to a closing fence
# at the start of a line, or to the end of the text (a cut-off generation).
_FENCE = re.compile(r"```[ \t]*(?P<lang>[\w+#.-]*)[^\n]*\n(?P<code>.*?)(?:^[ \t]*```|\Z)", re.MULTILINE | re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.MULTILINE) is not None


def _compiles(source: str) -> bool:
    try:
        compile(source, "<candidate>", "exec")  # compiling runs nothing
    except (SyntaxError, ValueError):
        return False
    return True


def _prompt_imports(prompt: str) -> str:
    lines = [line for line in prompt.splitlines() if line.startswith(("import ", "from "))]
    return "\n".join(lines) + "\n\n" if lines else ""


def extract_code(completion: str, prompt: str, entry_point: str) -> str:
    """The program to test: the prompt plus the model's code for ``entry_point``.

    Chat models answer with ```` ```python ```` blocks: the first block that
    defines ``entry_point`` is used, else the first Python block; text without
    fences is taken as code. Code that defines ``entry_point`` is appended to
    the whole prompt (its imports and any helpers it defines, e.g.
    ``encode_cyclic``; the later definition replaces the prompt's stub);
    otherwise the code is the body of the prompt's function (``prompt + code``),
    re-indented if the model wrote it flush left.
    """
    blocks = [(m["lang"].lower(), m["code"]) for m in _FENCE.finditer(completion)]
    python_blocks = [code for lang, code in blocks if lang in _PYTHON_TAGS] or [code for _, code in blocks]
    if python_blocks:
        code = next((c for c in python_blocks if _defines(c, entry_point)), python_blocks[0])
    else:
        code = completion
    if _defines(code, entry_point):
        code = textwrap.dedent(code)  # blocks inside markdown lists come indented
        head = prompt if _compiles(prompt) else _prompt_imports(prompt)
        return head.rstrip("\n") + "\n\n\n" + code
    program = prompt + code
    if not _compiles(program):
        reindented = prompt + textwrap.indent(textwrap.dedent(code), "    ")
        if _compiles(reindented):
            return reindented
    return program


@dataclass
class ExecutionResult:
    """The outcome of running one HumanEval program."""

    passed: bool
    status: str  # "passed" | "failed" (tests ran, did not pass) | "timeout" | "error" (did not compile, or died)
    detail: str  # one short line: the exception, the signal, ...
    output: str = ""  # stdout + stderr of the program, truncated


# Runs in the child before the generated code (passed with -c, so nothing is
# imported from the parent): resource limits, the socket patch, then the
# program with __name__ != "__main__" (as in the reference harness, which uses
# exec), and a result file that only a finished run writes: a candidate that
# calls exit(0) early does not count as passed.
_DRIVER = r'''
import os, resource, socket, sys, traceback
_, program, result, mem, cpu, fsize = sys.argv

def limit(kind, soft, hard):
    try:
        _, current = resource.getrlimit(kind)
        if current != resource.RLIM_INFINITY:
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(kind, (soft, hard))
    except (ValueError, OSError, AttributeError):
        pass  # the platform lacks this limit; the wall-clock timeout still applies

limit(resource.RLIMIT_AS, int(mem), int(mem))
limit(resource.RLIMIT_CPU, int(cpu), int(cpu) + 1)
limit(resource.RLIMIT_FSIZE, int(fsize), int(fsize))
limit(resource.RLIMIT_CORE, 0, 0)

def no_network(*args, **kwargs):
    raise OSError("network access is disabled while running generated code")

class NoNetworkSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        no_network()

socket.socket = NoNetworkSocket
import _socket
_socket.socket = NoNetworkSocket
for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo",
             "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
    setattr(socket, name, no_network)

def report(status, detail=""):
    with open(result, "w", encoding="utf-8") as f:
        f.write(status + "\n" + detail)

def describe(exc):
    text = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == program]
    if frames:
        text += f" (line {frames[-1].lineno}: {(frames[-1].line or '').strip()})"
    return text

try:
    with open(program, encoding="utf-8") as f:
        code = compile(f.read(), program, "exec")
except (SyntaxError, ValueError) as exc:
    report("error", f"{type(exc).__name__}: {getattr(exc, 'msg', exc)} (line {getattr(exc, 'lineno', '?')})")
    sys.exit(1)
try:
    exec(code, {"__name__": "__candidate__", "__builtins__": __builtins__})
except MemoryError as exc:
    report("error", "MemoryError (over the memory limit)")
    sys.exit(1)
except SystemExit as exc:
    report("failed", f"the program called exit({exc.code!r}) before the tests finished")
    sys.exit(1)
except BaseException as exc:
    report("failed", describe(exc))
    sys.exit(1)
report("passed")
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)  # skip atexit handlers and leftover non-daemon threads of the candidate
'''

_MEMORY_LIMIT = 2 * 1024**3  # address space: enough for the tests, stops runaway allocations
_FILE_SIZE_LIMIT = 16 * 1024**2
_OUTPUT_CHARS = 2000
_DETAIL_CHARS = 300


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left in the group


def _tail(text: str, chars: int) -> str:
    return text if len(text) <= chars else "..." + text[-chars:]


def run_humaneval(problem: dict, completion: str, timeout_s: float = 10.0) -> ExecutionResult:
    """Run a completion against a HumanEval problem's tests (``problem``: ``prompt``, ``test``, ``entry_point``).

    The program (extracted code + ``test`` + ``check(entry_point)``) runs in
    ``sys.executable -I`` in a fresh temporary directory with ~2 GiB of address
    space, a CPU-time limit, a 16 MiB file-size limit, no core dumps, no stdin,
    a minimal environment and the socket module patched to refuse
    connections; its process group is killed after ``timeout_s`` seconds of wall
    time and again when it ends (so no background children survive).
    Best-effort isolation for model mistakes, not a security sandbox.
    """
    if os.name != "posix":
        raise SpecAdaptError("HumanEval execution needs a POSIX system (Linux or macOS); run the benchmark there.")
    entry_point = problem["entry_point"]
    program = extract_code(completion, problem["prompt"], entry_point)
    program += "\n\n" + problem["test"] + "\n\n" + f"check({entry_point})\n"

    with tempfile.TemporaryDirectory(prefix="specadapt-humaneval-", ignore_cleanup_errors=True) as tmp:
        program_path = Path(tmp) / "solution.py"
        result_path = Path(tmp) / "result.txt"
        output_path = Path(tmp) / "output.txt"
        program_path.write_text(program, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        cpu_s = math.ceil(timeout_s) + 1
        command = [sys.executable, "-I", "-c", _DRIVER, str(program_path), str(result_path),
                   str(_MEMORY_LIMIT), str(cpu_s), str(_FILE_SIZE_LIMIT)]
        # Output goes to a file, not a pipe: a pipe held open by a stray child
        # could block us, and the file-size limit bounds it.
        with open(output_path, "wb") as output:
            # Limits are set by the driver inside the child rather than with
            # preexec_fn, which is unsafe in a threaded parent (torch is).
            proc = subprocess.Popen(
                command, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
            try:
                proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # The child leads its own group (start_new_session): this also ends its children.
                _kill_group(proc.pid)
                proc.wait()
        text = output_path.read_bytes()[-4 * _OUTPUT_CHARS :].decode("utf-8", "replace")
        output = _tail(text, _OUTPUT_CHARS)
        report = result_path.read_text(encoding="utf-8", errors="replace") if result_path.exists() else None

    if timed_out:
        return ExecutionResult(False, "timeout", f"no result within {timeout_s:g} s; killed", output)
    if report is not None:
        status, _, detail = report.partition("\n")
        return ExecutionResult(status == "passed", status, _tail(detail, _DETAIL_CHARS), output)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        why = {"SIGXCPU": " (CPU time limit)", "SIGKILL": " (killed, e.g. CPU time limit)"}.get(name, "")
        return ExecutionResult(False, "error", f"died from {name}{why}", output)
    return ExecutionResult(False, "error", f"exited with code {proc.returncode} before the tests finished", output)


# ----------------------------------------------------------------------------
# per-example scoring and agreement
# ----------------------------------------------------------------------------


def score_example(example: Example, completion: str, *, timeout_s: float = 10.0) -> dict | None:
    """Score one completion by the example's task; None for examples without a task ("none")."""
    if example.task == "gsm8k":
        reference = example.reference["answer"]
        predicted = extract_gsm8k_answer(completion)
        return {"correct": gsm8k_correct(completion, reference), "predicted": predicted, "reference": reference}
    if example.task == "humaneval":
        result = run_humaneval(example.reference, completion, timeout_s=timeout_s)
        return {"correct": result.passed, "status": result.status, "detail": result.detail}
    if example.task == "none":
        return None
    raise SpecAdaptError(f"example {example.id!r} has unknown task {example.task!r}; use 'gsm8k', 'humaneval' or 'none'.")


def summarize_scores(scores: list[dict | None]) -> dict:
    """``{"scored": n, "correct": k, "accuracy": k / n}`` over the scored examples (accuracy None when n = 0)."""
    scored = [s for s in scores if s is not None]
    correct = sum(bool(s["correct"]) for s in scored)
    return {"scored": len(scored), "correct": correct, "accuracy": correct / len(scored) if scored else None}


def exact_match(a: str, b: str) -> bool:
    """Whether two outputs are identical up to surrounding whitespace."""
    return a.strip() == b.strip()


_TOKEN = re.compile(r"\w+|[^\w\s]")


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix/Hyyrö): O(len(a)·len(b)/64)."""
    if len(a) < len(b):
        a, b = b, a  # bits over the longer one, Python-level loop over the shorter one
    positions: dict[str, int] = {}
    for i, token in enumerate(a):
        positions[token] = positions.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full  # zero bits mark the columns where the LCS grew
    for token in b:
        u = v & positions.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def text_overlap(a: str, b: str) -> float:
    """ROUGE-L F1 between two texts, on word and punctuation tokens (case kept); 1.0 for two empty texts."""
    ta, tb = _TOKEN.findall(a), _TOKEN.findall(b)
    if not ta and not tb:
        return 1.0
    if not ta or not tb:
        return 0.0
    return 2 * _lcs_length(ta, tb) / (len(ta) + len(tb))
