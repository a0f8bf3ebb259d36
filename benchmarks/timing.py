"""Timing helpers shared by the benchmarks: interleaved medians, the machine's matmul peak, peak RSS.

On a shared machine a neighbour's load drifts over minutes; timing the peers in turn, round after
round, exposes each to the same drift, so their ratio is fairer than their absolute times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch


def interleaved_medians(functions: dict[str, Callable[[], Any]], repeats: int, warm_up: bool = True) -> dict[str, float]:
    """Median wall seconds of each ``functions[name]()``: a warm-up call each (unless the caller made
    one), then ``repeats`` rounds calling each in turn."""
    if warm_up:
        for function in functions.values():
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matmul rate, FLOP/s, at torch's current thread count: the fastest of
    ``repeats`` ``size``^3 products (a peak, so the quickest run, not the median)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB (VmHWM: unlike ``ru_maxrss`` it is not inherited across exec)."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def machine_note() -> str:
    """One line for table headers: torch threads and the 1-minute load average when the run started."""
    return f"{torch.get_num_threads()} torch thread(s), load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def add_device_option(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--device`` (default cpu) for ``what``, checked by :func:`checked_device` after parsing."""
    parser.add_argument("--device", default="cpu", help=f"torch device of {what} (cpu, cuda, cuda:1)")


def checked_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Return if this machine has ``device``, else exit with the parser's one-line error (exit 2) before any work."""
    from videoldm.generation import UserError, check_device

    try:
        check_device(device)
    except UserError as error:
        parser.error(str(error))
