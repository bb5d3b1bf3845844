"""What changed in a store folder between two moments (for "nothing else changed" checks)."""

from __future__ import annotations

from pathlib import Path

Snapshot = dict[str, tuple[int, int]]


def snapshot(root: Path) -> Snapshot:
    """Every file under ``root``: relative path -> (size, mtime in ns)."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def changed(before: Snapshot, after: Snapshot) -> set[str]:
    """Paths added, removed or rewritten between two snapshots."""
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def leftovers(root: Path) -> list[str]:
    """Temporary files of the store's atomic writer left behind (there must be none)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tmp-*"))
