"""Small file helpers for the run folders that bench, train-head, tune-head, distill and eval-draft keep,
and :class:`OutputFolder`, the one rule by which they delete or replace files."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import SpecAdaptError


def write_json_atomic(path: Path, obj: Any, indent: int | None = 2, default: Any = None) -> None:
    """Write ``obj`` as JSON via a temporary file and a rename: a crash, or a process reading it meanwhile,
    never sees half a file. One writer per path (the temporary file's name is fixed)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def recorded_args(args: Any) -> dict:
    """A script's parsed arguments as a results file records them: a path inside the working directory relative
    to it, any other path by its name alone, so that no machine's paths go into a committed file."""
    here = Path.cwd().resolve()

    def portable(value: Any) -> Any:
        if not isinstance(value, Path):
            return value
        full = value.resolve()
        return str(full.relative_to(here)) if full.is_relative_to(here) else value.name

    return {key: portable(value) for key, value in vars(args).items()}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl_tolerant(path: Path, repair: bool = False) -> list[dict]:
    """Lines of a JSONL file we append to; a last line cut off by a crash is dropped (and removed if ``repair``)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    rows, good_end = [], 0
    for line in text.splitlines(keepends=True):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        if not line.endswith("\n"):
            rows.pop()  # complete JSON but no newline: treat as cut off, rewrite it later
            break
        good_end += len(line)
    if repair and good_end < len(text):
        path.write_text(text[:good_end], encoding="utf-8")
    return rows


# ----------------------------------------------------------------------------
# output folders: delete or replace only what the command proves it wrote
# ----------------------------------------------------------------------------

MANIFEST_FILE = ".specadapt-manifest.json"
MANIFEST_FORMAT = 1


class OutputFolder:
    """A folder one command writes, with a manifest (:data:`MANIFEST_FILE`) naming that command, its run key
    and the entries (files or subfolders, relative to the folder) it wrote.

    The rule every command follows: :meth:`check` first (it writes nothing and refuses a file, a folder that
    holds anything without this command's manifest, or an entry the command would write that the manifest
    does not name); then, once every other input is validated, :meth:`claim`, :meth:`record` and
    :meth:`remove`, which deletes only entries the manifest names. A user's files are never touched.
    """

    def __init__(self, path: str | Path, command: str, option: str = "--out") -> None:
        self.path = Path(path).expanduser()
        self.command = command  # e.g. "bench": messages say "specadapt bench"
        self.option = option  # how the user gave the folder, for messages

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    def _where(self) -> str:
        return f"{self.option} {self.path}"

    def manifest(self) -> dict | None:
        """The manifest, None if there is none; an error if it is unreadable or another command's."""
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = read_json(self.manifest_path)
            files, command = manifest["files"], manifest["command"]
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise TypeError("files is not a list of names")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpecAdaptError(
                f"{self.manifest_path} is unreadable ({exc}); specadapt cannot tell which files there are its own. "
                f"Choose another {self.option} (nothing was changed)."
            ) from None
        if command != self.command:
            raise SpecAdaptError(
                f"{self._where()} was written by specadapt {command}, not specadapt {self.command}; "
                f"choose another {self.option} (nothing was changed)."
            )
        return manifest

    def check(self, will_write: Iterable[str] = ()) -> dict | None:
        """Validate without writing anything; return the manifest (None for a new or empty folder).

        Refused: a path that is a file; a non-empty folder without this command's manifest; an entry of
        ``will_write`` that exists but that the manifest does not name (a user's file of the same name)."""
        if self.path.exists() and not self.path.is_dir():
            raise SpecAdaptError(f"{self._where()} is a file; give a folder.")
        manifest = self.manifest()
        if manifest is None:
            existing = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
            if existing:
                shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
                raise SpecAdaptError(
                    f"{self._where()} already holds files that specadapt {self.command} did not write ({shown}); "
                    f"choose a new or empty folder (nothing was changed)."
                )
            return None
        owned = set(manifest["files"])
        foreign = [n for n in will_write if n not in owned and (self.path / n).exists()]
        if foreign:
            raise SpecAdaptError(
                f"{self._where()} holds {', '.join(foreign)}, which specadapt {self.command} did not write; "
                f"move it away or choose another {self.option} (nothing was changed)."
            )
        return manifest

    @property
    def key(self) -> Any:
        manifest = self.manifest()
        return None if manifest is None else manifest.get("key")

    def owns(self, name: str) -> bool:
        manifest = self.manifest()
        return manifest is not None and name in manifest["files"]

    def claim(self, key: Any = None, files: Iterable[str] = ()) -> None:
        """Create the folder and its manifest (or reopen this command's), recording ``files`` and ``key``.
        Call :meth:`check` before; an unwritable folder is refused here, before anything else is written."""
        manifest = self.check(files) or {"format": MANIFEST_FORMAT, "command": self.command, "key": None, "files": []}
        if key is not None:
            manifest["key"] = key
        manifest["files"] = list(dict.fromkeys([*manifest["files"], *files]))
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.manifest_path, manifest)
        except OSError as exc:
            raise SpecAdaptError(
                f"cannot write to {self._where()}: {exc.strerror or exc}; choose a writable folder."
            ) from None

    def adopt(self, files: Iterable[str]) -> None:
        """Write a manifest naming ``files`` for a folder that has none, which the caller has recognised by
        its content as this command's (e.g. a run written before manifests existed). Nothing else is claimed."""
        if self.manifest() is not None:
            raise SpecAdaptError(f"{self._where()} already has a manifest; nothing to adopt.")
        write_json_atomic(self.manifest_path, {"format": MANIFEST_FORMAT, "command": self.command, "key": None,
                                               "files": list(dict.fromkeys(files))})

    def record(self, *names: str) -> None:
        """Note entries as written by this command, before writing them (a crash between leaves them owned)."""
        self.claim(files=names)

    def remove(self, *names: str, forget: bool = True) -> list[str]:
        """Delete the entries of ``names`` the manifest names (all of them when ``names`` is empty) and, with
        ``forget``, drop them from it (without, they stay recorded: the command writes them again); others
        are left alone. Returns what was deleted."""
        manifest = self.manifest()
        if manifest is None:
            return []
        owned = manifest["files"]
        chosen = [n for n in (names or owned) if n in owned]
        for name in chosen:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        if forget:
            manifest["files"] = [n for n in owned if n not in chosen]
            write_json_atomic(self.manifest_path, manifest)
        return chosen
