"""What a run was measured on: the machine, the versions, the commit, and the machine's measured GEMM peak.

The peak is what model FLOPs utilisation (MFU) is taken against: a square matrix product in each precision, with
the run's thread count, timed like everything else (median of repeats, with the spread).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from bench.measure import spread, synchronizer, timed

REPO = Path(__file__).resolve().parent.parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict:
    gpu = None
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        gpu = {"name": torch.cuda.get_device_name(index), "count": torch.cuda.device_count(),
               "memory_gib": round(properties.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu,
            "platform": platform.platform(), "python": platform.python_version()}


def versions() -> dict:
    found = {"torch": torch.__version__}
    for name in ("transformers", "numpy", "sklearn"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    return found


def git_commit() -> dict:
    """The short commit and whether the working tree differs from it. A copy without .git (a machine the tree was
    carried to) reads BENCH_GIT_COMMIT from the environment instead."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": os.environ.get("BENCH_GIT_COMMIT", "unknown"), "dirty": None}


def gemm_peak(device: str = "cpu", size: int = 2048, repeats: int = 10, precisions=("fp32", "bf16"),
              calls_per_repeat: int = 1) -> dict:
    """GFLOP/s of a (size x size) @ (size x size) product in each precision: 2 * size**3 FLOPs a product. On a
    GPU one product is too short to time on its own, so a repeat times `calls_per_repeat` of them."""
    synchronize = synchronizer(device)
    generator = torch.Generator().manual_seed(0)
    result = {"size": size, "threads": torch.get_num_threads(), "device": device,
              "calls_per_repeat": calls_per_repeat}
    if torch.device(device).type == "cuda":  # fp32 products may run as TF32 when this is on
        result["tf32"] = torch.backends.cuda.matmul.allow_tf32
    for precision in precisions:
        a = torch.randn(size, size, generator=generator).to(device=device, dtype=DTYPES[precision])
        b = torch.randn(size, size, generator=generator).to(device=device, dtype=DTYPES[precision])

        def products(a=a, b=b) -> None:
            for _ in range(calls_per_repeat):
                torch.mm(a, b)

        products()  # warm-up: thread pools, oneDNN's or cuBLAS's kernel choice
        seconds = [timed(products, synchronize) for _ in range(repeats)]
        flops = 2 * size**3 * calls_per_repeat
        result[precision] = {"gflops": spread([flops / s / 1e9 for s in seconds])}
    return result


def measure_peak(device: str = "cpu", quick: bool = False, precisions=("fp32", "bf16")) -> dict:
    """The GEMM peak at the size that suits the device: 2048 on a CPU (the issue's size); on a GPU 8192, ten
    products a repeat, since a 2048 product there is over in microseconds and times the launch, not the math."""
    repeats = 3 if quick else 10
    if torch.device(device).type == "cuda":
        return gemm_peak(device, 4096 if quick else 8192, repeats, precisions, calls_per_repeat=10)
    return gemm_peak(device, 2048, repeats, precisions)
