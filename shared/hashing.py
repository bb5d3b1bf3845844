"""Content hashes: every stored result is named by what went into it, so re-runs are free."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of every file under a folder (a DICOM series) in name order."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode())
        with f.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal settings hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(*parts: Any, length: int = 16) -> str:
    """Short hex key over JSON-able parts (input digests, parameters, code version)."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:length]
