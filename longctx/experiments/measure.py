"""How the study and the benchmark measure, written once: the machine a run used, peak memory,
the text table they print, and whether a run failed.

One copy, so that `study_results.json` and the benchmark's JSON describe their machine under
the same keys. Study results written before this module existed name two of them differently
(`gpu`, `cpu_threads`); `machine_summary` reads both.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import threading

import psutil
import torch
import transformers

import longctx

MIB = 2**20

# What PeakRSS measures, for the notes of the runs that use it.
RSS_GROWTH = ("peak growth of the process resident set size (longctx.experiments.measure.PeakRSS: "
              "psutil, sampled every 5 ms)")


# --------------------------------------------------------------------------- the machine


def device_name(device: str) -> str:
    """The GPU's name on CUDA, else the CPU model (from /proc/cpuinfo where there is one)."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    """The machine and library versions a run used, as its results file records them."""
    env = {"device": device, "device_name": device_name(device),
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "longctx": longctx.__version__,
           "platform": platform.platform()}
    if device == "cuda":
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   device_memory_mib=torch.cuda.get_device_properties(0).total_memory / MIB)
    return env


def machine_summary(environment: dict) -> str:
    """The GPU's name, or "cpu, N threads". Older study results name the GPU `gpu` and the
    thread count `cpu_threads`: read as well, so that their reports do not change."""
    if environment.get("gpu"):
        return environment["gpu"]
    if environment.get("device") == "cuda":
        return environment.get("device_name", "cuda")
    threads = environment.get("torch_threads", environment.get("cpu_threads", "?"))
    return f"{environment.get('device', '?')}, {threads} threads"


# --------------------------------------------------------------------------- peak memory


def release_free_memory():
    """Collects garbage and hands the C heap's free pages back to the OS (glibc `malloc_trim`),
    so that memory freed by an earlier training does not hide this one's growth."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: growth may be understated after earlier runs
        pass


class PeakRSS:
    """Peak growth of this process's resident set size over the `with` block, in MiB, sampled
    every `interval` seconds by a background thread (and at entry and exit)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.process = psutil.Process()
        self._stop = threading.Event()

    def __enter__(self):
        release_free_memory()
        self.baseline = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.growth_mib = (self.peak - self.baseline) / MIB
        return False


class PeakCudaMemory:
    """Peak growth of the memory PyTorch allocates on the current GPU over the `with` block, in
    MiB (the peak statistics are reset at entry, so an earlier training does not count)."""

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.baseline = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.growth_mib = (torch.cuda.max_memory_allocated() - self.baseline) / MIB
        return False


def memory_meter(device: str):
    """The peak-growth meter of `device`: allocated GPU memory on CUDA, resident memory on CPU."""
    return PeakCudaMemory() if device == "cuda" else PeakRSS()


# --------------------------------------------------------------------------- results


def format_table(header: list[str], lines: list[list[str]]) -> str:
    """An aligned text table under `header`: the first column left-aligned, the others right.
    A line shorter than the header (a failure's message) aligns all its cells but the last,
    which runs on past the columns, and takes no part in the widths."""
    widths = [max(len(line[i]) for line in [header, *lines] if len(line) == len(header))
              for i in range(len(header))]

    def render(line):
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(line, widths))]
        if len(line) < len(header):
            cells[-1] = line[-1]
        return " | ".join(cells)

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *map(render, lines)])


def failed(results: dict) -> bool:
    """True when a run recorded a failure: a study row with errors, or a benchmark cell that
    failed for a reason other than memory or a length its model cannot take."""
    return any(entry.get("errors") or entry.get("error_kind") == "error"
               for entry in results["results"])
