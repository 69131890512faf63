"""Timing and its spread: every figure a benchmark reports is the median of repeats, with their range and quartiles.

On a shared VM the machine's speed drifts by more than the gaps being measured, so systems are timed in
alternation (A, B, A, B, ...), and each figure keeps its repeats' spread so that a reader can tell a gap from noise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch


def spread(values: Sequence[float], scale: float = 1.0) -> dict:
    """The median of `values` (times `scale`) with its min, max, quartiles and the repeats themselves."""
    if not values:
        raise ValueError("spread of no values")
    scaled = sorted(float(v) * scale for v in values)
    q1, _, q3 = statistics.quantiles(scaled, n=4, method="inclusive") if len(scaled) > 1 else scaled * 3
    return {"median": statistics.median(scaled), "min": scaled[0], "max": scaled[-1], "q1": q1, "q3": q3,
            "n": len(scaled), "values": [float(v) * scale for v in values]}


def rates(seconds: Sequence[float], amount: float) -> dict:
    """`amount` per second of each repeat (tokens/s from seconds per step), with its spread."""
    return spread([amount / s for s in seconds])


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> dict:
    """Round-by-round ratios of two interleaved series (A's time / B's time in the same round), with their spread:
    a paired comparison, so drift that falls on both in one round cancels."""
    return spread([a / b for a, b in zip(numerators, denominators, strict=True)])


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """What to call before reading the clock: CUDA runs asynchronously, so its queue must drain first."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def timed(call: Callable[[], object], synchronize: Callable[[], None] = lambda: None) -> float:
    synchronize()
    start = time.perf_counter()
    call()
    synchronize()
    return time.perf_counter() - start


def time_interleaved(calls: dict[str, Callable[[], object]], rounds: int, warmup: int = 2,
                     synchronize: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds of each call over `rounds` rounds, the calls taking turns within a round, after `warmup` untimed
    calls of each."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(timed(call, synchronize))
    return times
