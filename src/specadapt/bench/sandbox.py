"""Isolation for running model-generated code (HumanEval), with the strongest tool the machine allows.

Threat model: the code under test is hostile. It may try to change the score
(fake a pass), read secrets (the parent's environment, files), reach the
network, write outside its directory, leave processes behind, exhaust the
machine (fork bombs) or kill the benchmark. Two separate defences:

1. The verdict does not depend on isolation (:mod:`.scoring`): the tests run in
   a trusted checker process that calls the program over a pipe and receives
   only plain data (numbers, strings, containers), never objects. The program
   never holds the tests, the checker's output or its per-run nonce, so writing
   "passed" anywhere, exiting 0 or calling harness functions counts for nothing.
2. Containment, chosen once per process by :func:`sandbox_kind`:

   - ``"bwrap"``: Debian's bubblewrap. New PID, network, IPC and UTS namespaces
     (plus a user namespace when not root); a read-only view of the system
     directories and the Python installation only (no /home, /root, /work, /tmp
     of the host), a fresh writable directory as /tmp, a fresh /proc and /dev;
     an unprivileged uid (65534: as root via ``setpriv`` after bwrap made the
     namespaces, otherwise the user namespace maps it), no capabilities,
     ``no_new_privs``; RLIMIT_NPROC (which binds only a non-root uid). Killing
     bwrap kills the namespace's init and with it every process of the run,
     ``setsid`` or not. The parent's processes and environment are invisible.
   - ``"none"``: no namespaces (bwrap missing, or the kernel or container
     refuses them). The program still gets resource limits, a fresh working
     directory, a minimal environment, its own session whose process group is
     killed, and a socket module that refuses connections; RLIMIT_NPROC only
     when not root. It runs as the benchmark's user, so it can write where that
     user can, read the parent's environment, reach the network through a
     subprocess, survive through ``setsid`` and signal the benchmark; with
     enough effort (ptrace, /proc/<pid>/mem) it could even tamper with the
     checker. A warning says so once on stderr and results record
     ``sandbox: none``.

Trusted, out of scope: the kernel (namespace escapes), the dataset's tests
and prompts (the checker runs them unsandboxed), and what the system
directories hold for anyone to read (/etc, /usr: a HumanEval copy installed
there would show its tests). Memory is limited per process, so a run's total
is at most about RLIMIT_NPROC times RLIMIT_AS; a cgroup would bound it, but
bwrap does not manage cgroups. As root, every run's "nobody" shares one uid
with the machine's other "nobody" processes, which count toward its process
limit.

Set ``SPECADAPT_SANDBOX`` to ``bwrap`` (fail when unavailable) or ``none``
(skip isolation, e.g. on a machine where bwrap misbehaves); ``auto`` (default)
probes. Install bubblewrap (``apt-get install bubblewrap``) for the real sandbox.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import SpecAdaptError

SANDBOX_KINDS = ("bwrap", "none")
SANDBOX_ENV = "SPECADAPT_SANDBOX"
SANDBOX_UID = 65534  # "nobody" on Debian and most distributions
# Processes (threads count too) a run may add for its uid: HumanEval code needs
# none; a fork bomb stops here, so its memory is at most this many address-space limits.
PROCESS_MARGIN = 32
# Mounted read-only when they exist: what a dynamically linked Python needs.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_PROBE_TIMEOUT_S = 30.0

_warned = False


def interpreter() -> str:
    """The Python that runs generated code: the real interpreter behind a virtualenv's link.

    Run with ``-I`` it sees the standard library only, not the benchmark's
    packages (which include the HumanEval data with its solutions), and it is
    the same in every sandbox kind.
    """
    return os.path.realpath(sys.executable)


def _dropping_uid() -> bool:
    """Whether bwrap runs as root and hands the program to ``setpriv`` (no user namespace needed)."""
    return os.geteuid() == 0


def _python_dirs() -> list[str]:
    """Directories the interpreter needs, outside the system directories that are mounted anyway."""
    exe = Path(interpreter())
    dirs = {str(Path(p).resolve()) for p in (sys.base_prefix, sys.base_exec_prefix)} | {str(exe.parent.parent)}
    return sorted(d for d in dirs if not any(d == s or d.startswith(s + "/") for s in _SYSTEM_DIRS))


def _bwrap_command(workdir: Path, argv: list[str]) -> list[str]:
    command = ["bwrap", "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid",
               "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if not _dropping_uid():
        command += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    for d in _SYSTEM_DIRS:
        command += ["--ro-bind-try", d, d]
    created: set[str] = set()
    for d in _python_dirs():
        # bwrap copies the mode of a host directory it recreates (/root is 0700):
        # make the way to the interpreter passable, and nothing else of those directories.
        for parent in reversed(Path(d).parents[:-1]):
            if str(parent) not in created:
                created.add(str(parent))
                command += ["--perms", "0755", "--dir", str(parent)]
        command += ["--ro-bind", d, d]
    command += ["--proc", "/proc", "--dev", "/dev", "--bind", str(workdir), "/tmp", "--chdir", "/tmp",
                "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
                "--setenv", "TMPDIR", "/tmp", "--setenv", "LANG", "C.UTF-8", "--setenv", "LC_ALL", "C.UTF-8"]
    if _dropping_uid():
        # bwrap keeps only these two capabilities for setpriv, which gives up
        # root and every capability before the program starts.
        command += ["--cap-add", "CAP_SETUID,CAP_SETGID", "--", "setpriv",
                    f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
                    "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    return command + ["--", *argv]


def sandbox_command(kind: str, workdir: Path, argv: list[str]) -> tuple[list[str], str, dict[str, str]]:
    """``(command, cwd, env)`` that runs ``argv`` in ``workdir`` under the given kind.

    Under bwrap ``workdir`` is the program's /tmp, its working directory; paths
    in ``argv`` must be relative to it.
    """
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir),
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    if kind == "bwrap":
        return _bwrap_command(workdir, argv), str(workdir), env
    if kind == "none":
        return list(argv), str(workdir), env
    raise SpecAdaptError(f"unknown sandbox kind {kind!r}; use one of {', '.join(SANDBOX_KINDS)}.")


def prepare_workdir(kind: str, workdir: Path) -> None:
    """Give the program's directory to the uid it runs as (root's 0700 directory is closed to "nobody")."""
    if kind == "bwrap" and _dropping_uid():
        os.chown(workdir, SANDBOX_UID, SANDBOX_UID)


def _tasks_of(uid: int) -> int:
    """Tasks (threads included, as RLIMIT_NPROC counts them) whose real uid is ``uid``."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            lines = Path(entry.path, "status").read_text().splitlines()
            fields = dict(line.split(":", 1) for line in lines if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue  # ended meanwhile, or no such line
    return count


def process_limit(kind: str) -> int | None:
    """RLIMIT_NPROC for the program: its uid's current tasks + :data:`PROCESS_MARGIN`; None where it cannot bind.

    The kernel counts per uid (per user namespace), ignores the limit for root,
    and counts every task of the uid, so the base is what already runs as it.
    """
    if kind == "bwrap":
        # As root the program runs as "nobody" in the host's user namespace; otherwise
        # in a user namespace of its own, where it starts alone.
        return (_tasks_of(SANDBOX_UID) if _dropping_uid() else 0) + PROCESS_MARGIN
    if os.geteuid() == 0:
        return None
    return _tasks_of(os.getuid()) + PROCESS_MARGIN


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill the program and everything it started, then reap it.

    ``proc`` was started with ``start_new_session``: its process group goes.
    Under bwrap that group holds bwrap, whose death takes the PID namespace's
    init and with it every process in the namespace, wherever it moved.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left in the group
    proc.wait()


def _probe(kind: str) -> str | None:
    """None when ``kind`` runs the interpreter here; else why not."""
    if kind == "none":
        return None
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    if _dropping_uid() and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    with tempfile.TemporaryDirectory(prefix="specadapt-probe-") as tmp:
        prepare_workdir(kind, Path(tmp))
        script = "import os; open('w', 'w').write('x'); print(os.getuid(), os.getpid())"
        command, cwd, env = sandbox_command(kind, Path(tmp), [interpreter(), "-I", "-c", script])
        try:
            done = subprocess.run(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=_PROBE_TIMEOUT_S, start_new_session=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap failed to start: {exc}"
        if done.returncode != 0:
            return f"bwrap failed: {(done.stderr.strip().splitlines() or ['exit status %d' % done.returncode])[-1]}"
        uid, _, pid = done.stdout.strip().partition(" ")
        if uid != str(SANDBOX_UID) or not pid.isdigit() or int(pid) > 10:  # a fresh PID namespace numbers from 1
            return f"bwrap ran the program as uid {uid!r} with pid {pid!r}, not as {SANDBOX_UID} in a new PID namespace"
    return None


@functools.cache
def bwrap_problem() -> str | None:
    """Why the bwrap sandbox does not work on this machine, or None when it does (probed once)."""
    return _probe("bwrap")


def _auto() -> tuple[str, str | None]:
    why = bwrap_problem()
    return ("none", why) if why else ("bwrap", None)


def sandbox_kind(requested: str | None = None) -> str:
    """The sandbox generated code runs in: ``"bwrap"`` or ``"none"`` (see the module docstring).

    ``requested`` (default: ``$SPECADAPT_SANDBOX``, else ``"auto"``) may force a
    kind; ``"bwrap"`` raises when bwrap does not work here. The first time the
    answer is ``"none"`` a warning goes to stderr.
    """
    requested = (requested or os.environ.get(SANDBOX_ENV) or "auto").strip().lower()
    if requested == "auto":
        kind, why = _auto()
    elif requested == "bwrap":
        kind, why = _auto()
        if kind != "bwrap":
            raise SpecAdaptError(f"{SANDBOX_ENV}=bwrap but the bwrap sandbox does not work here: {why}. "
                                 "Install bubblewrap (apt-get install bubblewrap), allow user namespaces, or unset it.")
    elif requested == "none":
        kind, why = "none", f"{SANDBOX_ENV}=none"
    else:
        raise SpecAdaptError(f"{SANDBOX_ENV}={requested!r} is not a sandbox kind; use auto, bwrap or none.")
    if kind == "none":
        _warn_once(why)
    return kind


def _warn_once(why: str | None) -> None:
    global _warned
    if not _warned:
        _warned = True
        print(f"specadapt: WARNING: generated code (HumanEval) runs WITHOUT a sandbox ({why}): it can write files, "
              "read the environment, use the network and signal the benchmark as this user "
              f"({'root' if os.geteuid() == 0 else 'uid %d' % os.getuid()}). Scores stay unforgeable by the "
              "usual means; results record sandbox: none. Install bubblewrap for isolation.", file=sys.stderr)
