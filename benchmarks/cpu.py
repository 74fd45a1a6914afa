"""The CPU a benchmark ran on, as lscpu shows it (model name, family, model, flags): int8
and SIMD speed-ups depend on the flags (AVX2, AVX-512, VNNI), so every figure carries them."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_cpu() -> str:
    """Lines of ``key: value`` from /proc/cpuinfo's first processor (Linux), with the count
    of CPUs this process may use; the platform's name elsewhere."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor is enough
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        return f"CPU: {platform.processor() or platform.machine()}"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    keys = [("Model name", "model name"), ("CPU family", "cpu family"), ("Model", "model"),
            ("Stepping", "stepping"), ("Flags", "flags")]
    lines = [f"{label}: {fields[key]}" for label, key in keys if key in fields]
    return "\n".join([f"CPU(s) usable: {usable} ({platform.machine()})", *lines])


if __name__ == "__main__":
    print(describe_cpu())
