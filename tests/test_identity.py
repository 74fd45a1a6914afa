"""Device identity from /proc/cpuinfo texts of boards that are not here (Raspberry Pi 4 and 5,
a phone's big.LITTLE SoC) and two x86 generations whose model name the hypervisor masks."""

from __future__ import annotations

import pytest

from edgepipe.device.identity import (
    describe_identity,
    diff_words,
    fingerprint,
    identity_diff,
    parse_identity,
)
from edgepipe.errors import EdgepipeError
from edgepipe.latency_tables.table import LatencyTable, Target


def arm_cpuinfo(features: str, variant: str, part: str, revision: int, cores: int,
                trailer: str) -> str:
    block = ("processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\n"
             "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {variant}\n"
             "CPU part\t: {part}\nCPU revision\t: {revision}\n\n")
    return "".join(block.format(n=n, features=features, variant=variant, part=part,
                                revision=revision) for n in range(cores)) + trailer


PI4 = arm_cpuinfo("fp asimd evtstrm crc32 cpuid", "0x0", "0xd08", 3, 4,
                  "Hardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 10000000a1b2c3d4\n"
                  "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
PI5 = arm_cpuinfo("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                  "asimdrdm lrcpc dcpop asimddp", "0x4", "0xd0b", 1, 4,
                  "Revision\t: d04170\nSerial\t\t: 8a1b2c3d4e5f6a7b\n"
                  "Model\t\t: Raspberry Pi 5 Model B Rev 1.0\n")


def x86_cpuinfo(family: int, model: int, flags: str, mhz: str = "2595.124") -> str:
    block = ("processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\n"
             "model\t\t: {model}\nmodel name\t: AMD EPYC\nstepping\t: 1\n"
             "microcode\t: 0x1000065\ncpu MHz\t\t: {mhz}\ncache size\t: 512 KB\n"
             "flags\t\t: fpu vme de pse tsc msr pae {flags} hypervisor\n"
             "bogomips\t: 5190.24\n\n")
    return "".join(block.format(n=n, family=family, model=model, flags=flags, mhz=mhz)
                   for n in range(2))


ZEN3 = x86_cpuinfo(25, 1, "sse4_2 avx f16c fma avx2")  # AVX2, no AVX-512
ZEN5 = x86_cpuinfo(26, 2, "sse4_2 avx f16c fma avx2 avx512f avx512bw avx512vl avx512_vnni "
                          "avx512_bf16")


def identities() -> dict[str, dict]:
    return {
        "pi4": parse_identity(PI4, "aarch64", {n: 1800 for n in range(4)}, 3884324),
        "pi5": parse_identity(PI5, "aarch64", {n: 2400 for n in range(4)}, 8245900),
        "zen3": parse_identity(ZEN3, "x86_64", {0: None, 1: None}, 24 * 2**20),
        "zen5": parse_identity(ZEN5, "x86_64", {0: None, 1: None}, 24 * 2**20),
    }


def test_four_devices_four_fingerprints_and_the_same_text_twice_one():
    ids = identities()
    prints = {name: fingerprint(i) for name, i in ids.items()}
    assert len(set(prints.values())) == 4, prints
    assert fingerprint(parse_identity(PI4, "aarch64", {n: 1800 for n in range(4)},
                                      3884324)) == prints["pi4"]
    # what changes from one reading to the next on one machine changes nothing
    again = parse_identity(x86_cpuinfo(26, 2, "sse4_2 avx f16c fma avx2 avx512f avx512bw "
                                              "avx512vl avx512_vnni avx512_bf16", "3701.002"),
                           "x86_64", {0: None, 1: None}, 24 * 2**20 - 1000)
    assert fingerprint(again) == prints["zen5"]
    # ... while what decides speed does: an overclocked Pi 4 is another device
    overclocked = parse_identity(PI4, "aarch64", {n: 2000 for n in range(4)}, 3884324)
    assert fingerprint(overclocked) != prints["pi4"]


def test_identity_fields_read_from_the_texts():
    ids = identities()
    pi4, pi5, zen3, zen5 = ids["pi4"], ids["pi5"], ids["zen3"], ids["zen5"]
    assert pi4["clusters"] == [{"implementer": "0x41", "part": "0xd08", "variant": "0x0",
                                "max_mhz": 1800, "cores": 4, "name": "Cortex-A72"}]
    assert pi4["isa"] == ["asimd"] and pi4["memory_gib"] == 4 and pi4["cores"] == 4
    assert pi4["board"] == "Raspberry Pi 4 Model B"  # the board revision is not kept
    assert pi5["clusters"][0]["name"] == "Cortex-A76"
    assert {"asimddp", "fphp", "asimdhp"} <= set(pi5["isa"]) and pi5["max_mhz"] == 2400
    assert (zen3["family"], zen3["model"], zen3["vendor"]) == (25, 1, "AuthenticAMD")
    assert "avx512_vnni" not in zen3["isa"] and "avx512_vnni" in zen5["isa"]
    assert zen3["model_name"] == zen5["model_name"] == "AMD EPYC"  # masked: not what tells
    assert describe_identity(pi4).startswith("aarch64 4× Cortex-A72 r0 @ 1800 MHz "
                                             "(Raspberry Pi 4 Model B), 4 cores")
    assert "family 26 model 2" in describe_identity(zen5)


def test_big_little_clusters_in_order():
    parts = ["0xd05"] * 4 + ["0xd41"] * 3 + ["0xd44"]
    text = "".join(arm_cpuinfo("fp asimd asimddp i8mm", "0x1", part, 0, 1, "")
                   .replace("processor\t: 0", f"processor\t: {n}") for n, part in enumerate(parts))
    freqs = {n: 1800 if n < 4 else 2400 if n < 7 else 3000 for n in range(8)}
    phone = parse_identity(text, "aarch64", freqs, 11 * 2**20)
    assert [(c["cores"], c["name"], c["max_mhz"]) for c in phone["clusters"]] == [
        (4, "Cortex-A55", 1800), (3, "Cortex-A78", 2400), (1, "Cortex-X1", 3000)]
    assert phone["isa"] == ["asimd", "asimddp", "i8mm"] and phone["max_mhz"] == 3000


def test_differences_in_words_side_by_side():
    ids = identities()
    words = diff_words(ids["zen3"], ids["zen5"], ("table", "this device"))
    assert words.startswith("table: family 25, model 1, ")
    table_side, device_side = words.split(" · ")
    assert "no avx512_vnni" in table_side and "avx512_vnni" in device_side
    assert "no avx512_vnni" not in device_side and device_side.startswith("this device: "
                                                                          "family 26, model 2")
    fields = [d[0] for d in identity_diff(ids["pi4"], ids["pi5"])]
    assert fields == ["clusters", "isa", "max_mhz", "memory_gib"]
    pi_words = diff_words(ids["pi4"], ids["pi5"], ("table", "this device"))
    assert "4× Cortex-A72" in pi_words and "4× Cortex-A76" in pi_words
    assert "no asimddp" in pi_words.split(" · ")[0]
    assert diff_words(ids["pi4"], ids["pi4"], ("a", "b")) == ""


def test_a_table_of_one_cpu_refuses_the_other_naming_the_fields():
    ids = identities()
    table = LatencyTable(device={"fingerprint": fingerprint(ids["zen3"]),
                                 "identity": ids["zen3"]},
                         runtime="executorch", runtime_version="executorch 1.5.1",
                         precision="fp32", threads=1, space={}, method={})
    here = Target(fingerprint(ids["zen5"]), "executorch", "fp32", 1, ids["zen5"])
    with pytest.raises(EdgepipeError) as refused:
        table.check_target(here)
    message = str(refused.value)
    assert "table: family 25, model 1" in message and "this device: family 26, model 2" in message
    assert "no avx512_vnni" in message and "--force" in message and "\n" not in message
    table.check_target(here, force=True)  # forced: allowed
    same = Target(fingerprint(ids["zen3"]), "executorch", "int8", 2, ids["zen3"])
    with pytest.raises(EdgepipeError, match=r"precision 'fp32' ≠ 'int8'; threads 1 ≠ 2"):
        table.check_target(same)
    # a table of programs that took NCHW-contiguous input (before channels-last .pte inputs:
    # no program_input recorded) measured an input transpose today's programs do not run
    zen3 = Target(fingerprint(ids["zen3"]), "executorch", "fp32", 1, ids["zen3"])
    with pytest.raises(EdgepipeError, match="programs with NCHW-contiguous input measured ≠ "
                                            "channels-last input"):
        table.check_target(zen3)
    table.method["program_input"] = "channels-last"
    table.check_target(zen3)
