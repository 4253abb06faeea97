"""The one timing helper every benchmark uses: contenders interleaved on short chunks of the
same work, their order rotated chunk by chunk, and the median of the per-chunk ratios.

These machines have slow phases lasting seconds; a ratio taken within one chunk (all contenders
run back to back within a fraction of a second) survives them, where separate timings do not.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Timing:
    """One contender: median seconds per call and the median and range of its per-chunk ratio."""

    seconds: float
    ratio: float
    low: float
    high: float


def compare(
    contenders: dict[str, Callable[[], object]],
    baseline: str,
    *,
    chunks: int = 41,
    chunk_seconds: float = 0.02,
) -> dict[str, Timing]:
    """Time every contender in chunks of about ``chunk_seconds`` each, interleaved and rotated.

    Each contender is calibrated to a number of calls filling one chunk; then, ``chunks`` times,
    every contender runs one chunk back to back (the order rotated each time). The ratio of a
    contender to ``baseline`` is taken per chunk (seconds per call over seconds per call), and the
    median of those ratios is reported.
    """
    names = list(contenders)
    calls = {}
    for name, fn in contenders.items():
        fn()  # warm-up: first calls of a process run slow
        n, elapsed = 1, 0.0
        while elapsed < chunk_seconds / 4:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            elapsed = time.perf_counter() - start
            if elapsed < chunk_seconds / 4:
                n *= 2
        calls[name] = max(1, round(n * chunk_seconds / max(elapsed, 1e-9)))
    per_call: dict[str, list[float]] = {name: [] for name in names}
    for index in range(chunks):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            fn, n = contenders[name], calls[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            per_call[name].append((time.perf_counter() - start) / n)
    results = {}
    for name in names:
        ratios = [a / b for a, b in zip(per_call[name], per_call[baseline])]
        quartiles = statistics.quantiles(ratios, n=4)
        results[name] = Timing(statistics.median(per_call[name]), statistics.median(ratios), quartiles[0], quartiles[2])
    return results


def report(title: str, results: dict[str, Timing], per: int = 1) -> None:
    """One run: per-call time (divided by ``per``, e.g. steps per chunk), the median per-chunk
    ratio and its interquartile range."""
    report_runs(title, [results], per)


def report_runs(title: str, runs: list[dict[str, Timing]], per: int = 1) -> None:
    """Several runs of ``compare``: the median time, and the range of the median ratios over the runs."""
    print(f"\n{title} ({len(runs)} run{'s' if len(runs) > 1 else ''})")
    for name in runs[0]:
        seconds = statistics.median(run[name].seconds for run in runs) / per
        ratios = [run[name].ratio for run in runs]
        low, high = min(ratios), max(ratios)
        shown = f"{low:.2f}x" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}x"
        if len(runs) == 1:
            shown += f" (IQR {runs[0][name].low:.2f}-{runs[0][name].high:.2f})"
        print(f"  {name:<36} {seconds * 1e6:9.2f} us   {shown}")


def blas_threads() -> str:
    """What the benchmark ran with: the BLAS thread count, as the environment set it."""
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if variable in os.environ:
            return f"{variable}={os.environ[variable]}"
    try:
        from threadpoolctl import threadpool_info

        counts = {f"{i['internal_api']}: {i['num_threads']}" for i in threadpool_info() if i.get("user_api") == "blas"}
        return ", ".join(sorted(counts)) or "unknown"
    except ImportError:
        return "unset (BLAS default)"
