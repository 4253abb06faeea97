"""Interleaved timing: every contender runs in the same process, alternating, median of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def compare(contenders: dict[str, Callable[[], object]], number: int = 2000, repeats: int = 15) -> dict[str, float]:
    """Median seconds per call of each contender, measured in alternation (warm-up first)."""
    for fn in contenders.values():
        for _ in range(max(number // 10, 10)):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - start) / number)
    return {name: statistics.median(values) for name, values in samples.items()}


def report(title: str, results: dict[str, float], baseline: str) -> None:
    base = results[baseline]
    print(f"\n{title}")
    for name, seconds in results.items():
        print(f"  {name:<34} {seconds * 1e6:9.2f} us   {seconds / base:5.2f}x   {(seconds - base) * 1e6:+7.2f} us")
