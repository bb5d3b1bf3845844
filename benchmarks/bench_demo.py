"""The demo end to end: ``dtlr-submit --cohort demo`` in a fresh store, timed.

Run: ``python -m benchmarks.bench_demo [--weights random]`` (about 4 minutes on 2 cores).
Writes the section "Demo end to end" of benchmarks/RESULTS.md: total wall time (demo data
generation, extraction, fine-tuning, embedding, models, report) and each stage's seconds as
``dtlr-submit`` reports them. Budget: 5 minutes on a 2-core machine without a GPU.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._results import write_section

BIN = Path(sys.executable).parent
BUDGET_S = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None,
                        help="CNN start (default: the settings' imagenet; 'random' offline)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dtlr-bench-demo-")) / "store"
    shown = "dtlr-submit --cohort demo" + (f" --weights {args.weights}" if args.weights else "")
    cmd = [str(BIN / "dtlr-submit"), *shown.split()[1:], "--store", str(root)]
    try:
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, encoding="utf-8")
        total = time.perf_counter() - t0
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)
    stages = [line for line in done.stderr.splitlines()
              if line.startswith("│ ") and line.split("│")[1].strip() in
              ("extract", "finetune", "embed")]
    rows = "\n".join("| " + " | ".join(c.strip() for c in line.split("│")[1:-1]) + " |"
                     for line in stages)
    verdict = "within" if total <= BUDGET_S else "over"
    body = f"""
`{shown}` in a fresh
store: demo data generated (120 + 40 patients), extraction, CNN (quick profile on this
CPU{', random initial weights: no ImageNet download here' if args.weights == 'random' else ''}),
embedding, the four models and the report.

**Total: {total:.0f} s** ({verdict} the {BUDGET_S:.0f} s budget).

| stage | done | skipped | failed | seconds |
|---|---|---|---|---|
{rows}

The rest of the total is demo data generation, start-up, and the modeler with its report.
"""
    write_section("Demo end to end", body)
    print(body)


if __name__ == "__main__":
    main()
