"""Task scoring for ``specadapt bench``: GSM8K final-number match, HumanEval pass@1, output agreement.

- GSM8K: the final number of the model's answer (:func:`extract_gsm8k_answer`)
  compared numerically with the number after ``####`` in the reference.
- HumanEval: the code of the answer (:func:`extract_code`) run against the
  problem's tests (:func:`run_humaneval`). The code is treated as hostile: it
  runs in the strongest sandbox the machine offers (:mod:`.sandbox`: bubblewrap
  namespaces, a read-only filesystem, an unprivileged uid; else resource limits
  and a killed process group, with a warning), and the pass/fail verdict comes
  from a separate checker process that runs the tests and only exchanges plain
  data with the code, so the code cannot fake a pass (see ``_CHECKER``).
- Everything else: agreement with the target-only output, as exact match
  (:func:`exact_match`) and ROUGE-L F1 (:func:`text_overlap`), so that lossy
  methods can be judged.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpecAdaptError
from .sandbox import interpreter, kill_tree, prepare_workdir, process_limit, sandbox_command, sandbox_kind

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
    sandbox: str = ""  # the isolation it ran in: "bwrap" | "none" (see .sandbox)


# The verdict channel. The program and the tests run in two processes joined by
# two pipes. The program's process (_DRIVER, sandboxed) runs the candidate code
# and answers calls of its entry point; the checker (_CHECKER, trusted: the
# dataset's test code only) runs check(candidate) with a stand-in that forwards
# each call and gets back plain data (_CODEC), so no object of the program's
# (say, one whose __eq__ is always true) reaches the tests. Only the checker
# says "passed", on its stdout, a pipe the program does not hold, with a nonce
# it got on stdin before the program started: whatever the program writes,
# wherever, and however it exits, a pass needs check() to return in the checker.

# Plain data both ways: JSON with tags for what JSON lacks. Any other type is
# refused; the decoder accepts only this shape and raises on anything else.
_CODEC = r'''
import json, sys
if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(0)  # answers may be huge integers

def enc(x):
    if x is None or isinstance(x, bool):
        return x
    if isinstance(x, int):
        return {"i": int.__repr__(x)}
    if isinstance(x, float):
        return {"f": float.__repr__(x)}
    if isinstance(x, complex):
        return {"c": [float.__repr__(complex.real.__get__(x)), float.__repr__(complex.imag.__get__(x))]}
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, bytes):
        return {"b": bytes.hex(x)}
    for tag, kind in (("l", list), ("t", tuple), ("s", set), ("fs", frozenset)):
        if isinstance(x, kind):
            return {tag: [enc(v) for v in x]}
    if isinstance(x, dict):
        return {"d": [[enc(k), enc(v)] for k, v in dict.items(x)]}
    raise TypeError(f"a value of type {type(x).__name__} cannot pass between the program and the tests "
                    "(only None, bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict)")

def dec(x):
    if x is None or type(x) in (bool, str):
        return x
    if type(x) is dict and len(x) == 1:
        (tag, v), = x.items()
        if tag in ("i", "f", "b") and type(v) is str:
            return {"i": int, "f": float, "b": bytes.fromhex}[tag](v)
        if type(v) is list:
            if tag == "c" and len(v) == 2 and all(type(p) is str for p in v):
                return complex(float(v[0]), float(v[1]))
            if tag in ("l", "t", "s", "fs"):
                return {"l": list, "t": tuple, "s": set, "fs": frozenset}[tag](dec(e) for e in v)
            if tag == "d" and all(type(p) is list and len(p) == 2 for p in v):
                return {dec(k): dec(e) for k, e in v}
    raise ValueError("malformed value")
'''

# The program's side, in the sandbox: limits, the socket patch, the program
# (with __name__ != "__main__", as in the reference harness, which uses exec),
# then one reply per call. It knows nothing that makes a pass.
_DRIVER = _CODEC + r'''
import os, resource, socket, traceback
_, program, entry_point, calls_fd, replies_fd, mem, cpu, fsize, nproc = sys.argv

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
if nproc != "-":
    limit(resource.RLIMIT_NPROC, int(nproc), int(nproc))

# Against accidents only (a subprocess or the original class gets around it):
# the sandbox's network namespace is what blocks hostile code.
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

calls = os.fdopen(int(calls_fd), "rb")
replies = os.fdopen(int(replies_fd), "wb")

def send(message):
    replies.write(json.dumps(message).encode() + b"\n")
    replies.flush()

def describe(exc):
    text = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == program]
    if frames:
        text += f" (line {frames[-1].lineno}: {(frames[-1].line or '').strip()})"
    return text

def outcome(exc, when):
    if isinstance(exc, MemoryError):
        return "error", "MemoryError (over the memory limit)"
    if isinstance(exc, SystemExit):
        return "failed", f"the program called exit({exc.code!r}) {when}"
    return "failed", describe(exc)

try:
    with open(program, encoding="utf-8") as f:
        code = compile(f.read(), program, "exec")
except (SyntaxError, ValueError) as exc:
    send({"error": f"{type(exc).__name__}: {getattr(exc, 'msg', exc)} (line {getattr(exc, 'lineno', '?')})"})
    os._exit(1)
namespace = {"__name__": "__candidate__", "__builtins__": __builtins__}
try:
    exec(code, namespace)
except BaseException as exc:
    status, detail = outcome(exc, "before the tests finished")
    send({status: detail})
    os._exit(1)
if entry_point not in namespace:
    send({"failed": f"NameError: the program does not define {entry_point}"})
    os._exit(1)
function = namespace[entry_point]
send({"ready": True})
while True:
    line = calls.readline()
    if not line:
        break  # the checker is done
    call = json.loads(line)
    try:
        send({"value": enc(function(*dec(call["args"]), **dec(call["kwargs"])))})
    except BaseException as exc:
        status, detail = outcome(exc, "during the tests")
        send({"raised": detail, "error": status == "error"})
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)  # skip atexit handlers and leftover non-daemon threads of the candidate
'''

# The trusted side: the dataset's prompt (for helpers such as encode_cyclic)
# and tests, with the entry point replaced by a stand-in for the program. A
# value the program sends is decoded to plain data or the run is an error.
_CHECKER = _CODEC + r'''
import linecache, os, resource, traceback
_, calls_fd, replies_fd, max_message, mem = sys.argv
try:
    resource.setrlimit(resource.RLIMIT_AS, (int(mem), int(mem)))  # replies decode to at most this much
except (ValueError, OSError):
    pass
job = json.loads(sys.stdin.readline())
verdicts = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # anything the tests print goes with the output, not into the verdict
verdicts.write("started\n")
verdicts.flush()
calls = os.fdopen(int(calls_fd), "wb")
replies = os.fdopen(int(replies_fd), "rb")

def verdict(status, detail=""):
    verdicts.write(json.dumps({"nonce": job["nonce"], "status": status, "detail": detail}) + "\n")
    verdicts.flush()
    os._exit(0)

class ProgramError(BaseException):
    """The program died, broke the protocol or ran out of memory: the run is an error.
    A BaseException, so that test code catching Exception cannot swallow it."""

class ProgramRaised(Exception):
    """The program's function raised: the tests see an exception, as they would in-process."""

def receive():
    line = replies.readline(int(max_message))
    if not line.endswith(b"\n"):
        raise ProgramError("the program ended before the tests finished" if not line
                           else "the program sent a reply over the size limit")
    try:
        message = json.loads(line)
        if type(message) is not dict or len(message) not in (1, 2):
            raise ValueError
        return message
    except (ValueError, RecursionError):
        raise ProgramError("the program sent a malformed reply") from None

def candidate(*args, **kwargs):
    try:
        call = json.dumps({"args": enc(list(args)), "kwargs": enc(dict(kwargs))})
    except (TypeError, RecursionError) as exc:
        raise ProgramError(f"the tests pass what cannot be sent to the program: {exc}") from None
    try:
        calls.write(call.encode() + b"\n")
        calls.flush()
    except (BrokenPipeError, OSError):
        raise ProgramError("the program ended before the tests finished") from None
    reply = receive()
    if "value" in reply:
        try:
            return dec(reply["value"])
        except Exception:
            raise ProgramError("the program sent a malformed value") from None
    if type(reply.get("raised")) is str:
        if reply.get("error") is True:
            raise ProgramError(reply["raised"][:1000])
        raise ProgramRaised(reply["raised"][:1000])
    raise ProgramError("the program sent a malformed reply")

try:
    first = receive()
except ProgramError as exc:
    verdict("error", str(exc))
for status in ("error", "failed"):
    if type(first.get(status)) is str:
        verdict(status, first[status][:1000])
if first != {"ready": True}:
    verdict("error", "the program sent a malformed first message")

source = job["header"] + job["test"] + "\n"
filename = "<tests>"
linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
namespace = {"__name__": "__check__"}
try:
    exec(compile(source, filename, "exec"), namespace)
    namespace[job["entry_point"]] = candidate
    namespace["check"](candidate)
except ProgramError as exc:
    verdict("error", str(exc))
except ProgramRaised as exc:
    verdict("failed", str(exc))
except BaseException as exc:
    text = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    if frames:
        text += f" (line {frames[-1].lineno}: {(frames[-1].line or '').strip()})"
    verdict("failed", text)
verdict("passed")
'''

_MEMORY_LIMIT = 2 * 1024**3  # address space: enough for the tests, stops runaway allocations
_FILE_SIZE_LIMIT = 16 * 1024**2
_MESSAGE_LIMIT = 64 * 1024**2  # one reply of the program; bigger is an error, not a memory blow-up
_OUTPUT_CHARS = 2000
_DETAIL_CHARS = 300


def _tail(text: str, chars: int) -> str:
    return text if len(text) <= chars else "..." + text[-chars:]


def _read_verdict(text: bytes, nonce: str) -> tuple[str, str]:
    """The checker's ``(status, detail)``: one line after "started", carrying this run's nonce; else an error."""
    try:
        (line,) = text.decode("utf-8").splitlines()
        verdict = json.loads(line)
        if verdict["nonce"] == nonce and verdict["status"] in ("passed", "failed", "error"):
            return verdict["status"], str(verdict["detail"])
    except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
        pass
    return "error", "the test checker gave no verdict"


def run_humaneval(
    problem: dict, completion: str, timeout_s: float = 10.0, *, sandbox: str | None = None
) -> ExecutionResult:
    """Run a completion against a HumanEval problem's tests (``problem``: ``prompt``, ``test``, ``entry_point``).

    The program (the prompt with the extracted code) runs in ``sandbox``
    (default: the strongest this machine supports, see
    :func:`~specadapt.bench.sandbox.sandbox_kind`) from a fresh temporary
    directory, with ``python -I`` (standard library only), ~2 GiB of address
    space, CPU-time, file-size and process-count limits, no core dumps, no
    stdin and a minimal environment. The tests run in a separate checker
    process that calls the program's ``entry_point`` over a pipe; only the
    checker's verdict counts, so the program cannot fake a pass. Everything is
    killed after ``timeout_s`` seconds of wall time and again when it ends.
    """
    if os.name != "posix":
        raise SpecAdaptError("HumanEval execution needs a POSIX system (Linux or macOS); run the benchmark there.")
    kind = sandbox_kind(sandbox)
    entry_point = problem["entry_point"]
    prompt = problem["prompt"]
    program = extract_code(completion, prompt, entry_point)
    header = prompt if _compiles(prompt) else _prompt_imports(prompt)
    nonce = secrets.token_hex(16)
    job = {"nonce": nonce, "header": header.rstrip("\n") + "\n\n", "test": problem["test"], "entry_point": entry_point}

    # The program's directory is inside a private one (0700) that also holds
    # its captured output; under bwrap the program sees only the inner one.
    with tempfile.TemporaryDirectory(prefix="specadapt-humaneval-", ignore_cleanup_errors=True) as private:
        work = Path(private) / "work"
        work.mkdir()
        (work / "solution.py").write_text(program, encoding="utf-8")
        prepare_workdir(kind, work)
        output_path = Path(private) / "output.txt"
        nproc = process_limit(kind)
        calls_r, calls_w = os.pipe()
        replies_r, replies_w = os.pipe()
        checker = program_proc = None
        timed_out = False
        # Output goes to a file, not a pipe: a pipe held open by a stray child
        # could block us, and the file-size limit bounds it. Limits are set by
        # the driver inside the child rather than with preexec_fn, which is
        # unsafe in a threaded parent (torch is).
        with open(output_path, "wb") as output:
            try:
                checker = subprocess.Popen(
                    [sys.executable, "-I", "-c", _CHECKER, str(calls_w), str(replies_r), str(_MESSAGE_LIMIT),
                     str(2 * _MEMORY_LIMIT)],
                    cwd=private, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=output, pass_fds=(calls_w, replies_r), start_new_session=True,
                    bufsize=0,
                )
                # The checker has the job (and the nonce) before the program exists.
                checker.stdin.write(json.dumps(job).encode() + b"\n")
                checker.stdin.close()
                started = checker.stdout.readline()
                if started == b"started\n":
                    cpu_s = math.ceil(timeout_s) + 1
                    argv = [interpreter(), "-I", "-c", _DRIVER, "solution.py", entry_point, str(calls_r),
                            str(replies_w), str(_MEMORY_LIMIT), str(cpu_s), str(_FILE_SIZE_LIMIT),
                            "-" if nproc is None else str(nproc)]
                    command, cwd, env = sandbox_command(kind, work, argv)
                    program_proc = subprocess.Popen(
                        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                        pass_fds=(calls_r, replies_w), start_new_session=True,
                    )
                for fd in (calls_r, calls_w, replies_r, replies_w):
                    os.close(fd)  # each end now lives only in the process that uses it
                calls_r = calls_w = replies_r = replies_w = -1
                try:
                    checker.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                verdict_text = b"" if timed_out else checker.stdout.read()  # one line: it fits the pipe
            finally:
                for fd in (calls_r, calls_w, replies_r, replies_w):
                    if fd >= 0:
                        os.close(fd)
                for proc in (program_proc, checker):
                    if proc is not None:
                        kill_tree(proc)
                if checker is not None:
                    checker.stdout.close()
        text = output_path.read_bytes()[-4 * _OUTPUT_CHARS :].decode("utf-8", "replace")
        output = _tail(text, _OUTPUT_CHARS)

    if timed_out:
        return ExecutionResult(False, "timeout", f"no result within {timeout_s:g} s; killed", output, kind)
    if program_proc is None:
        return ExecutionResult(False, "error", "the test checker failed to start", output, kind)
    status, detail = _read_verdict(verdict_text, nonce)
    if status == "error" and detail.startswith("the program ended") and program_proc.returncode:
        code = program_proc.returncode
        detail += f" (died from signal {-code})" if code < 0 else f" (exit status {code})"
    return ExecutionResult(status == "passed", status, _tail(detail, _DETAIL_CHARS), output, kind)


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
        return {"correct": result.passed, "status": result.status, "detail": result.detail, "sandbox": result.sandbox}
    if example.task == "none":
        return None
    raise SpecAdaptError(f"example {example.id!r} has unknown task {example.task!r}; use 'gsm8k', 'humaneval' or 'none'.")


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
