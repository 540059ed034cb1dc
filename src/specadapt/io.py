"""Small file helpers for the run folders that bench, train-head, tune-head and distill keep."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON via a temporary file and a rename: a crash never leaves half a file behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
