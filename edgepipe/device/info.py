"""What a device says about itself: CPU, clocks, heat, memory, OS, runtimes, fingerprint.

Standard library only, read from /proc and /sys where Linux (Raspberry Pi OS, Android) offers
them; a value the OS does not expose is ``None``, never a guess.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
from pathlib import Path
from typing import Any

from .runtimes import installed_runtimes

CPU_ROOT = Path("/sys/devices/system/cpu")


def _read(path: Path | str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _int(path: Path | str) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def cpu_model() -> str:
    """x86 names its CPU in ``model name``; ARM boards in ``Model``/``Hardware``."""
    fields: dict[str, str] = {}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    for key in ("model name", "Model", "Hardware", "Processor"):
        if fields.get(key):
            return fields[key]
    if fields.get("CPU part"):
        return f"ARM part {fields['CPU part']} (implementer {fields.get('CPU implementer')})"
    return platform.processor() or platform.machine()


def cpu_frequencies() -> list[dict[str, Any]]:
    cores = []
    for cpu in sorted(CPU_ROOT.glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])):
        freq = cpu / "cpufreq"
        khz = {k: _int(freq / f"scaling_{k}_freq") for k in ("cur", "min", "max")}
        cores.append({"cpu": int(cpu.name[3:]),
                      **{f"{k}_mhz": (v // 1000 if v else None) for k, v in khz.items()},
                      "governor": _read(freq / "scaling_governor")})
    return cores


def temperatures() -> dict[str, float]:
    temps = {}
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        milli = _int(zone / "temp")
        if milli is not None:
            temps[_read(zone / "type") or zone.name] = milli / 1000.0
    return temps


def memory_mb() -> dict[str, int]:
    mem = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            mem[key] = int(value.split()[0]) // 1024
    return {"total_mb": mem.get("MemTotal", 0), "available_mb": mem.get("MemAvailable", 0)}


def fingerprint() -> str:
    """Stable across reboots and agent restarts; changes with the board or its CPU setup.

    A latency table is only valid for the device it was measured on: this is the key.
    """
    machine_id = _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id") or \
        socket.gethostname()
    max_freqs = [c["max_mhz"] for c in cpu_frequencies()]
    parts = [machine_id, platform.machine(), cpu_model(), str(os.cpu_count()), str(max_freqs)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def device_info() -> dict[str, Any]:
    freqs = cpu_frequencies()
    governors = sorted({c["governor"] for c in freqs if c["governor"]})
    return {
        "hostname": socket.gethostname(),
        "fingerprint": fingerprint(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_frequencies": freqs,
        "governors": governors,
        "temperatures_c": temperatures(),
        "memory": memory_mb(),
        "os": {"system": platform.system(), "release": platform.release(),
               "distribution": _os_release(), "python": platform.python_version()},
        "runtimes": installed_runtimes(),
        "affinity_supported": hasattr(os, "sched_setaffinity"),
    }


def _os_release() -> str | None:
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return None
