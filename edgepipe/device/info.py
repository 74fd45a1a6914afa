"""What a device says about itself: identity, clocks, heat, memory, OS, runtimes.

Standard library only, read from /proc and /sys where Linux (Raspberry Pi OS, Android) offers
them; a value the OS does not expose is ``None``, never a guess.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from .identity import CPU_ROOT, describe_identity, fingerprint, fp16_support, local_identity
from .runtimes import installed_runtimes


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


def cpu_frequencies(root: Path = CPU_ROOT) -> list[dict[str, Any]]:
    """Per CPU: current, min and max scaling frequency (MHz) and governor; ``None`` each where
    cpufreq is not exposed."""
    cores = []
    for cpu in sorted(root.glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])):
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


# Raspberry Pi firmware's `vcgencmd get_throttled` bits: 0-3 now, 16-19 since boot
THROTTLE_BITS = {0: "under-voltage", 1: "ARM frequency capped", 2: "throttled",
                 3: "soft temperature limit"}


def throttled() -> dict[str, Any] | None:
    """The Raspberry Pi's throttling flags (``vcgencmd get_throttled``), or ``None`` where the
    tool does not exist or does not answer (any board but a Pi)."""
    tool = shutil.which("vcgencmd")
    if tool is None:
        return None
    try:
        out = subprocess.run([tool, "get_throttled"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        raw = int(out.partition("=")[2], 16)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return {"raw": hex(raw),
            "now": [name for bit, name in THROTTLE_BITS.items() if raw >> bit & 1],
            "since_boot": [name for bit, name in THROTTLE_BITS.items() if raw >> (bit + 16) & 1]}


def device_state() -> dict[str, Any]:
    """What may change during a measurement: per-core frequency and governor, temperatures,
    Pi throttling. Read at the start and end of every job."""
    return {"time": time.time(),
            "cpu": [{k: c[k] for k in ("cpu", "cur_mhz", "governor")}
                    for c in cpu_frequencies()],
            "temperatures_c": temperatures(), "throttled": throttled()}


def state_changes(start: dict[str, Any], end: dict[str, Any], fall_pct: float = 5.0
                  ) -> list[str]:
    """What went wrong between two :func:`device_state` readings, in words: a core whose
    frequency fell by more than ``fall_pct``, a governor that changed, throttling that began.
    Nothing is said of what neither reading knows."""
    flags = []
    before = {c["cpu"]: c for c in start.get("cpu") or []}
    for core in end.get("cpu") or []:
        was = before.get(core["cpu"])
        if not was:
            continue
        if was["cur_mhz"] and core["cur_mhz"] and \
                core["cur_mhz"] < was["cur_mhz"] * (1 - fall_pct / 100):
            flags.append(f"cpu{core['cpu']} frequency fell {was['cur_mhz']} → "
                         f"{core['cur_mhz']} MHz")
        if was["governor"] and core["governor"] and was["governor"] != core["governor"]:
            flags.append(f"cpu{core['cpu']} governor changed {was['governor']} → "
                         f"{core['governor']}")
    t0, t1 = start.get("throttled"), end.get("throttled")
    if t0 is not None and t1 is not None:
        began = [f for f in t1["now"] if f not in t0["now"]]
        began += [f for f in t1["since_boot"] if f not in t0["since_boot"] and f not in began]
        if began:
            flags.append(f"throttling began: {', '.join(began)} (vcgencmd {t1['raw']})")
    return flags


def device_info() -> dict[str, Any]:
    identity = local_identity()
    freqs = cpu_frequencies()
    governors = sorted({c["governor"] for c in freqs if c["governor"]})
    return {
        "hostname": socket.gethostname(),
        "fingerprint": fingerprint(identity),
        "identity": identity,
        "identity_words": describe_identity(identity),
        "fp16": fp16_support(identity),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_frequencies": freqs,
        "governors": governors,
        "temperatures_c": temperatures(),
        "throttled": throttled(),
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
