"""The JSON one benchmark run writes under bench/results/: what it ran on, then every benchmark's figures.

    {"suite": "cpu" | "gpu", "quick": bool, "date": ISO UTC, "git": {"commit", "dirty"}, "command": [...],
     "machine": {...}, "versions": {...}, "gemm_peak": {...},
     "benchmarks": {NAME: {"status": "ok", "wall_s": ..., <its figures>}
                         | {"status": "skipped", "reason": ...} | {"status": "error", "error": ...}},
     "wall_s": ...}

Named `<UTC date-time>-<commit>[-gpu][-quick].json`, so a listing sorts by date. A figure measured over repeats is
a `bench.measure.spread` (median, min, max, quartiles, the repeats). `python -m bench.docs` renders the latest.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from bench.machine import describe_machine, git_commit, versions

RESULTS = Path(__file__).resolve().parent / "results"


class Skip(Exception):
    """A benchmark that cannot run here (its inputs are missing): recorded as skipped, with the reason."""


def start(suite: str, quick: bool, command: list[str]) -> dict:
    return {"suite": suite, "quick": quick, "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "git": git_commit(), "command": " ".join(command), "machine": describe_machine(),
            "versions": versions(), "benchmarks": {}, "started": time.monotonic()}


def run_benchmark(record: dict, name: str, benchmark: Callable[[], dict], report: Callable[[dict], str] | None = None,
                  ) -> dict:
    """Run one benchmark into `record`: its figures, or why it was skipped, or the error that stopped it (the
    other benchmarks still run). Prints its report as it goes."""
    print(f"\n== {name} ==", flush=True)
    started = time.monotonic()
    try:
        figures = benchmark()
    except Skip as reason:
        entry = {"status": "skipped", "reason": f"skipped: {reason}"}
        print(entry["reason"], flush=True)
    except Exception as error:  # noqa: BLE001 - one benchmark's failure is recorded, the run goes on
        entry = {"status": "error", "error": f"{type(error).__name__}: {error}",
                 "traceback": traceback.format_exc(limit=6)[-4000:]}
        print(f"error: {entry['error']}", file=sys.stderr, flush=True)
    else:
        entry = {"status": "ok", "wall_s": time.monotonic() - started, **figures}
        if report is not None:
            print(report(figures), flush=True)
    record["benchmarks"][name] = entry
    return entry


def write(record: dict, results_dir: Path | str = RESULTS, path: Path | None = None) -> Path:
    """Write the record as `<date>-<commit>[-gpu][-quick].json` (or over `path`, a run writing as it goes) and
    return its path."""
    started = record["started"]
    record = {key: value for key, value in record.items() if key != "started"}
    record["wall_s"] = time.monotonic() - started
    if path is None:
        stamp = record["date"].replace("-", "").replace(":", "")
        suffix = ("-gpu" if record["suite"] == "gpu" else "") + ("-quick" if record["quick"] else "")
        path = Path(results_dir) / f"{stamp}-{record['git']['commit']}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    temporary.replace(path)
    return path


def failed(record: dict) -> list[str]:
    return [name for name, entry in record["benchmarks"].items() if entry["status"] == "error"]
