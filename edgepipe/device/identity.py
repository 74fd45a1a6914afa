"""A device's identity: what decides how fast a model runs on it, and nothing else.

The identity is read from ``/proc/cpuinfo``, ``/sys/devices/system/cpu`` and
``/proc/meminfo`` (standard library only: it runs on the device):

* x86: vendor, family / model / stepping (a hypervisor may mask the model name to "AMD EPYC";
  it cannot hide the family), and the ISA features that kernels dispatch on (XNNPACK, oneDNN
  and LiteRT pick AVX2, AVX-512, VNNI or AMX code paths by them);
* ARM: per core cluster the implementer / part / variant (0x41 / 0xd08 is a Cortex-A72,
  0xd0b a Cortex-A76), the cluster's core count and maximum frequency, and the features
  (asimddp: int8 dot products, i8mm, sve, fphp);
* core count, maximum frequency where the OS exposes it, total memory (GiB, rounded).

Not the host name or machine id: two boards of one kind share a table, and one board whose CPU
changed under it (a VM moved to a newer host) does not. The fingerprint is a hash of the
identity; :func:`identity_diff` says in words which fields differ.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from pathlib import Path
from typing import Any

CPU_ROOT = Path("/sys/devices/system/cpu")

# ISA features kernels dispatch on (x86 flags / ARM "Features" as /proc/cpuinfo names them)
X86_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
                "amx_bf16")
ARM_FEATURES = ("asimd", "asimdhp", "fphp", "asimddp", "asimdrdm", "i8mm", "bf16", "sve",
                "sve2", "sme")

# CPU part numbers of the implementer ARM (0x41), as in the Technical Reference Manuals
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1",
    "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3",
    "0xd4f": "Neoverse-V2", "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4",
}
IMPLEMENTERS = {"0x41": "ARM", "0x42": "Broadcom", "0x48": "HiSilicon", "0x4e": "NVIDIA",
                "0x51": "Qualcomm", "0x53": "Samsung", "0x61": "Apple", "0xc0": "Ampere"}

# the fields a fingerprint is made of, in the order they are described
FIELDS = ("arch", "vendor", "family", "model", "stepping", "clusters", "isa", "cores", "max_mhz",
          "memory_gib")


def _read(path: Path | str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _processors(cpuinfo: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The per-processor blocks of /proc/cpuinfo, and the lines outside them (ARM boards put
    ``Hardware``/``Model`` after the last processor)."""
    blocks: list[dict[str, str]] = []
    other: dict[str, str] = {}
    current: dict[str, str] | None = None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep:
            current = None  # a blank line ends a block
            continue
        if key == "processor" and value.isdigit():
            current = {"processor": value}
            blocks.append(current)
        elif current is not None:
            current.setdefault(key, value)
        else:
            other.setdefault(key, value)
    return blocks, other


def _int(value: str | None) -> int | None:
    try:
        return int(value, 0) if value is not None else None
    except ValueError:
        return None


def max_frequencies_mhz(root: Path = CPU_ROOT) -> dict[int, int | None]:
    """Each CPU's hardware maximum (``cpuinfo_max_freq``; not the governor's scaling limit),
    MHz; ``None`` where cpufreq is not exposed (most VMs)."""
    found: dict[int, int | None] = {}
    for cpu in root.glob("cpu[0-9]*"):
        khz = _int(_read(cpu / "cpufreq" / "cpuinfo_max_freq"))
        found[int(cpu.name[3:])] = khz // 1000 if khz else None
    return found


def mem_total_kib(meminfo: str | None = None) -> int | None:
    text = meminfo if meminfo is not None else _read("/proc/meminfo") or ""
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
    return int(match.group(1)) if match else None


def parse_identity(cpuinfo: str, machine: str, max_mhz: dict[int, int | None] | None = None,
                   mem_kib: int | None = None) -> dict[str, Any]:
    """The identity of a device from its /proc/cpuinfo text (and what /sys and /proc/meminfo
    say: per-CPU max MHz, MemTotal in KiB). Unknown values are ``None``."""
    blocks, other = _processors(cpuinfo)
    max_mhz = max_mhz or {}
    identity: dict[str, Any] = {"arch": machine, "vendor": None, "family": None, "model": None,
                                "stepping": None, "clusters": [], "isa": [],
                                "cores": len(blocks) or None, "max_mhz": None,
                                "memory_gib": round(mem_kib / 2**20) if mem_kib else None,
                                "model_name": None, "board": None}
    first = blocks[0] if blocks else {}
    if "vendor_id" in first or "cpu family" in first:  # x86
        identity.update(vendor=first.get("vendor_id"), family=_int(first.get("cpu family")),
                        model=_int(first.get("model")), stepping=_int(first.get("stepping")),
                        model_name=first.get("model name"))
        flags = set(first.get("flags", "").split())
        identity["isa"] = [f for f in X86_FEATURES if f in flags]
    elif "CPU part" in first:  # ARM: one cluster per run of identical cores
        clusters: list[dict[str, Any]] = []
        features: set[str] = set()
        for block in blocks:
            core = {"implementer": block.get("CPU implementer"), "part": block.get("CPU part"),
                    "variant": block.get("CPU variant"),
                    "max_mhz": max_mhz.get(int(block["processor"]))}
            features |= set(block.get("Features", "").split())
            if clusters and all(clusters[-1][k] == v for k, v in core.items()):
                clusters[-1]["cores"] += 1
            else:
                clusters.append({**core, "cores": 1,
                                 "name": ARM_PARTS.get(core["part"] or "", None)
                                 if core["implementer"] == "0x41" else None})
        identity["clusters"] = clusters
        implementers = {c["implementer"] for c in clusters}
        identity["vendor"] = ", ".join(IMPLEMENTERS.get(i or "", str(i)) for i in
                                       sorted(implementers, key=str))
        identity["isa"] = [f for f in ARM_FEATURES if f in features]
        board = other.get("Model") or other.get("Hardware")
        identity["board"] = re.sub(r"\s+Rev\s+\S+$", "", board) if board else None
    freqs = [max_mhz.get(i) for i in sorted(max_mhz)]
    if freqs and any(f is not None for f in freqs):
        identity["max_mhz"] = max(f for f in freqs if f is not None)
    return identity


# The ISA feature that gives a CPU half-precision vector arithmetic: what fp16 kernels need to
# compute in fp16 rather than convert to fp32 and back (XNNPACK's ``neonfp16arith`` kernels on
# ARM: ARMv8.2-A FEAT_FP16, /proc/cpuinfo "asimdhp", with "fphp" its scalar half; AVX512-FP16
# on x86, Intel Sapphire Rapids and later)
FP16_FEATURES = {"x86": "avx512_fp16", "arm": "asimdhp"}


def fp16_support(identity: dict[str, Any] | None) -> dict[str, Any]:
    """Whether a CPU computes fp16 natively, from the ISA features its identity lists:
    ``{"native": True | False | None, "feature": ..., "words": ...}`` (None: no identity to
    read it from, e.g. a device measured without an agent). Where it is not native, an fp16
    artifact still runs, without fp16's speed: LiteRT's XNNPACK delegate computes it in fp32
    (it switches to fp16 only where the CPU has fp16 arithmetic), and ExecuTorch's XNNPACK
    runs F16 kernels that convert to fp32 around each operation on x86 (F16C), F32 kernels
    behind converts on ARM without FEAT_FP16 (seen in their per-op names: "(NC, F16)" vs
    "(NC, F32)"; tests/test_fp16.py under an emulated Cortex-A72).

    Under qemu-user the identity is the host's /proc/cpuinfo (qemu passes it through), while
    the runtimes read the emulated CPU's features from the auxiliary vector."""
    if not identity or not identity.get("arch"):
        return {"native": None, "feature": None,
                "words": "fp16 arithmetic unknown: no CPU identity (measured without an agent)"}
    isa = set(identity.get("isa") or [])
    arm = bool(identity.get("clusters")) or str(identity["arch"]).startswith(("aarch64", "arm"))
    feature = FP16_FEATURES["arm" if arm else "x86"]
    if feature in isa:
        return {"native": True, "feature": feature,
                "words": f"native fp16 arithmetic ({feature})"}
    return {"native": False, "feature": feature,
            "words": f"no native fp16 arithmetic (no {feature})"}


def local_identity() -> dict[str, Any]:
    """This machine's identity, read now."""
    return parse_identity(_read("/proc/cpuinfo") or "", platform.machine(),
                          max_frequencies_mhz(), mem_total_kib())


def fingerprint(identity: dict[str, Any]) -> str:
    """16 hex digits that change with any field of :data:`FIELDS` and with nothing else."""
    key = {k: identity.get(k) for k in FIELDS}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _cluster_words(c: dict[str, Any]) -> str:
    name = c.get("name") or f"part {c.get('part')} (implementer {c.get('implementer')})"
    variant = f" r{_int(c.get('variant'))}" if c.get("variant") else ""
    mhz = f" @ {c['max_mhz']} MHz" if c.get("max_mhz") else ""
    return f"{c.get('cores')}× {name}{variant}{mhz}"


def field_words(identity: dict[str, Any], field: str) -> str:
    """One field of an identity in words (``family 25``, ``4× Cortex-A72 r0 @ 1800 MHz``)."""
    value = identity.get(field)
    if field == "clusters":
        return " + ".join(_cluster_words(c) for c in value) if value else "no ARM clusters"
    if field == "isa":
        return " ".join(value) if value else "no listed ISA features"
    if value is None:
        return {"max_mhz": "max frequency not exposed", "memory_gib": "memory unknown",
                "cores": "cores unknown"}.get(field, f"{field} unknown")
    units = {"max_mhz": " MHz max", "memory_gib": " GiB", "cores": " cores"}
    if field in units:
        return f"{value}{units[field]}"
    return f"{field} {value}" if field in ("family", "model", "stepping") else str(value)


def describe_identity(identity: dict[str, Any]) -> str:
    """The identity in one line of words, e.g. ``x86_64 AuthenticAMD family 25 model 17
    stepping 1 (AMD EPYC), 2 cores, ISA avx2 fma avx512f avx512_vnni, 23 GiB``."""
    if not identity:
        return "unknown device (no identity recorded)"
    parts = [identity.get("arch") or "?"]
    if identity.get("family") is not None:
        parts.append(f"{identity.get('vendor')} family {identity['family']} model "
                     f"{identity.get('model')} stepping {identity.get('stepping')}"
                     + (f" ({identity['model_name']})" if identity.get("model_name") else ""))
    elif identity.get("clusters"):
        parts.append(field_words(identity, "clusters")
                     + (f" ({identity['board']})" if identity.get("board") else ""))
    words = [" ".join(parts), field_words(identity, "cores")]
    if identity.get("max_mhz"):
        words.append(field_words(identity, "max_mhz"))
    words.append("ISA " + field_words(identity, "isa"))
    if identity.get("memory_gib"):
        words.append(field_words(identity, "memory_gib"))
    return ", ".join(words)


def identity_diff(mine: dict[str, Any], theirs: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The fingerprint fields that differ: (field, mine in words, theirs in words). ISA
    features are compared one by one: ``avx512_vnni`` against ``no avx512_vnni``."""
    differ = []
    for field in FIELDS:
        a, b = mine.get(field), theirs.get(field)
        if a == b:
            continue
        if field == "isa":
            only_a = [f for f in a or [] if f not in (b or [])]
            only_b = [f for f in b or [] if f not in (a or [])]
            differ.append((field, " ".join(only_a + [f"no {f}" for f in only_b]),
                           " ".join([f"no {f}" for f in only_a] + only_b)))
        else:
            differ.append((field, field_words(mine, field), field_words(theirs, field)))
    return differ


def diff_words(mine: dict[str, Any], theirs: dict[str, Any], names: tuple[str, str]) -> str:
    """``table: family 25, no avx512_vnni · this device: family 26, avx512_vnni``."""
    differ = identity_diff(mine, theirs)
    if not differ:
        return ""
    return (f"{names[0]}: {', '.join(d[1] for d in differ)} · "
            f"{names[1]}: {', '.join(d[2] for d in differ)}")


def machine_line() -> str:
    """This machine's identity in one line: the header of every benchmark's output (figures
    of one CPU are not figures of another)."""
    identity = local_identity()
    return f"measured on: {describe_identity(identity)} (fingerprint {fingerprint(identity)})"
