"""Write one benchmark's section of benchmarks/RESULTS.md, with the machine and the date."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = ("# Benchmark results\n\nEach section is written by the script it names; "
          "re-run it to update.\n")


def machine() -> str:
    """CPU model, cores and memory of this machine, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        meminfo = Path("/proc/meminfo").read_text(encoding="utf-8")
        mem_kb = next(int(line.split()[1]) for line in meminfo
                      .splitlines() if line.startswith("MemTotal"))
        mem = f", {mem_kb / 1024**2:.0f} GiB RAM"
    except (OSError, StopIteration):
        mem = ""
    return f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}"


def write_section(title: str, body: str, device: str | None = None) -> None:
    """Replace (or append) the section ``## title`` in RESULTS.md."""
    stamp = f"*{dt.date.today().isoformat()} on {device or machine()}*\n\n"
    section = f"## {title}\n\n{stamp}{body.strip()}\n"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else HEADER
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + section)
    RESULTS.write_text(text.rstrip() + "\n", encoding="utf-8")
