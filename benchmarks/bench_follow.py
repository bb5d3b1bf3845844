"""What following a distributed run costs the coordinator, at 10 000 tasks.

Run: ``python -m benchmarks.bench_follow`` from the repository root (about a minute on 2 cores;
needs ``redis-server``: a private one is started on a free port). Sends ``--tasks`` tasks of a
trivial test-only stage (benchmarks/follow_stage.py: the stage protocol's two status writes and
nothing else) through real Celery workers and follows them with the coordinator's own code
(``Dispatch`` -> ``Follower``), in this process. Measures this process (the coordinator):

* CPU seconds per task: building the messages, sending them, following them to the end
  (target: 2 ms or less);
* memory: resident set size sampled every 0.2 s while following (target: flat, i.e. not
  growing with the tasks still pending or done);
* wall time beyond the work: the run's wall time minus the workers' busy time per slot.

Writes the section "Following a run" of benchmarks/RESULTS.md (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

from benchmarks._results import write_section
from benchmarks.follow_stage import SPEC, NoopMessage, noop
from dtlr.services.coordinator.dispatch import Dispatch, Job, coordinator_app
from dtlr.services.coordinator.pipeline import new_submission
from dtlr.shared.store import Store
from tests.cluster import Redis, Worker


def rss_mib() -> float:
    """This process's resident set size now (MiB)."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler(threading.Thread):
    """RSS every 0.2 s, with the number of records received at that moment."""

    def __init__(self, progress: list[int]) -> None:
        super().__init__(daemon=True)
        self.progress = progress
        self.samples: list[tuple[int, float]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.samples.append((self.progress[0], rss_mib()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="Print, do not write RESULTS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dtlr-bench-follow-"))
    redis = Redis(work)
    redis.start()
    store = Store(work / "store")
    workers = [Worker(redis.url, store.root, "cpu", "--concurrency", str(args.concurrency),
                      "--include", "benchmarks.follow_stage") for _ in range(args.workers)]
    try:
        for w in workers:
            w.wait_ready()
        app = coordinator_app(redis.url)
        submission = new_submission()
        cpu0, rss0 = time.process_time(), rss_mib()
        jobs = [Job(SPEC, NoopMessage(store_root=str(store.root), submission=submission,
                                      cohort="bench", patient_id=f"P{i:06d}"), noop)
                for i in range(args.tasks)]
        cpu_build = time.process_time() - cpu0
        progress = [0]
        sampler = Sampler(progress)
        sampler.start()
        t0, cpu1, start = time.perf_counter(), time.process_time(), time.time()
        done = busy_s = 0.0
        for record in Dispatch(app, redis.url).run(jobs):
            done += record.state == "done"
            busy_s += record.seconds
            progress[0] += 1
        wall, end = time.perf_counter() - t0, time.time()
        cpu_follow = time.process_time() - cpu1
        sampler.stopped.set()
        sampler.join()
        # When the workers wrote the first and the last record: the rest of the wall time is
        # the coordinator's (sending before the first task, noticing the last one).
        mtimes = [p.stat().st_mtime for p in store.root.glob("status/*/*.json")]
        first, last = min(mtimes), max(mtimes)
    finally:
        for w in workers:
            w.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    n = progress[0]
    assert n == done == args.tasks, "lost tasks"
    slots = args.workers * args.concurrency
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    quarter = [next((rss for done, rss in sampler.samples if done >= q * n / 4),
                    sampler.samples[-1][1] if sampler.samples else rss_mib())
               for q in (1, 2, 3, 4)]
    per_task_ms = (cpu_build + cpu_follow) / n * 1000
    body = f"""
`python -m benchmarks.bench_follow`: {n} tasks of a trivial test-only stage
(benchmarks/follow_stage.py: two status writes) through {args.workers} real Celery workers x
{args.concurrency} processes on a private redis-server; the coordinator's own code
(`Dispatch` -> `Follower`: workers push "started"/"finished" events onto the submission's
list in the broker, the coordinator pops them) in the measured process.

| measure | value | target |
|---|---|---|
| coordinator CPU per task (build + send + follow) | **{per_task_ms:.2f} ms** | <= 2 ms |
| of which building the {n} messages | {cpu_build:.2f} s | |
| of which sending and following | {cpu_follow:.2f} s | |
| wall time | {wall:.1f} s ({n / wall:.0f} tasks/s) | |
| first task done after | {first - start:.2f} s | |
| following ended after the last task | {end - last:.2f} s | |
| wall time beyond the work (the two above) | {first - start + end - last:.2f} s | |
| stage protocol time inside the tasks, per slot | {busy_s / slots:.1f} s | |
| RSS before building the jobs | {rss0:.0f} MiB | |
| RSS at 25, 50, 75, 100 % of the records | {', '.join(f'{q:.0f}' for q in quarter)} MiB | flat |
| peak RSS | {peak:.0f} MiB | |

Per poll the coordinator's work is the events that arrived (a blocking pop of at most 1000)
plus, every 5 s, one inspection of the live workers: nothing is read per pending task (the
previous design read every pending job's status file every 0.5 s: 20 000 reads a second at
10 000 patients). The records are counted, not kept, so the RSS is the follower's own. The
wall time between the first and the last task is the workers' (Celery's per-task overhead on
{slots} processes sharing the cores with the coordinator), not the coordinator's.
"""
    print(body)
    if not args.no_write:
        write_section("Following a run", body)


if __name__ == "__main__":
    main()
