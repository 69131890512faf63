"""The serving benchmark, bench/bench_serve.py, run as its own process (it starts servers and stops them on
SIGTERM), its JSON read back into the run's record. Skipped while that script is absent."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.record import Skip

SCRIPT = Path(__file__).resolve().parent / "bench_serve.py"


def run(quick: bool, extra_args=(), timeout_s: float = 1800.0) -> dict:
    """`python bench/bench_serve.py [--quick] --out FILE [extra_args]`, its figures and exit status; stopped with
    SIGTERM (then killed) after `timeout_s`."""
    if not SCRIPT.is_file():
        raise Skip(f"no serving benchmark at {SCRIPT.relative_to(SCRIPT.parent.parent)}")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        out = Path(work) / "serve.json"
        command = [sys.executable, "bench/bench_serve.py", *(["--quick"] if quick else []), "--out", str(out),
                   *extra_args]
        process = subprocess.Popen(command, cwd=SCRIPT.parent.parent)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.terminate()  # bench_serve stops its servers on SIGTERM
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise RuntimeError(f"bench_serve.py ran past {timeout_s:g} s and was stopped") from None
        if not out.is_file():
            raise RuntimeError(f"bench_serve.py exited with {process.returncode} and wrote no JSON (its output is "
                               f"above)")
        figures = json.loads(out.read_text())
    return {"command": " ".join(command[1:]).replace(str(out), "FILE.json"), "exit_code": process.returncode,
            **figures}
