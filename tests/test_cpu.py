"""Reading the CPU and choosing the int8 preset from it: the machine classes edgeqa has run on, as /proc/cpuinfo
prints them (flag lines shortened to the flags that matter plus some that do not)."""

import pytest

from edgeqa.bench.cpu import parse_cpuinfo
from edgeqa.bench.files import EdgeQAError
from edgeqa.export.quantize import PRESETS, preset, preset_record

XEON_AMX = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"  # noqa: E501
EPYC_ZEN4 = "model name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni avx512_bf16 sha_ni\n"
EPYC_ZEN2 = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse fma avx2 sha_ni clzero\n"
SKYLAKE = "model name\t: Intel(R) Xeon(R) Gold 6148\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512cd\n"
ALDER_LAKE = "model name\t: 12th Gen Intel(R) Core(TM) i7-1260P\nflags\t\t: fpu avx2 avx_vnni\n"
NEOVERSE_N1 = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp asimddp\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd asimddp sve i8mm bf16 svebf16\n"


@pytest.mark.parametrize(
    "text, arch, isa, chosen, bf16",
    [
        (XEON_AMX, "x86_64", "amx_int8", "amx", True),
        (EPYC_ZEN4, "x86_64", "avx512_vnni", "avx512_vnni", True),
        (EPYC_ZEN2, "x86_64", "avx2", "avx2", False),
        (SKYLAKE, "x86_64", "avx512", "avx512", False),
        (ALDER_LAKE, "x86_64", "avx_vnni", "avx_vnni", False),
        (NEOVERSE_N1, "aarch64", "arm64_dotprod", "arm64", False),
        (GRAVITON3, "aarch64", "arm64_i8mm", "arm64", True),
        ("", "x86_64", "other", "avx2", False),
    ],
)
def test_auto_preset_follows_the_int8_instructions(text, arch, isa, chosen, bf16):
    cpu = parse_cpuinfo(text, arch)
    assert (cpu.isa, cpu.native_bf16) == (isa, bf16)
    record = preset_record("auto", cpu)
    assert record["chosen"] == chosen and record["fits_cpu"] and "warning" not in record
    assert record["cpu"]["isa"] == isa


def test_presets_saturate_only_where_the_instructions_do():
    # 16-bit intermediate sums (vpmaddubsw) on AVX2 and AVX-512 without VNNI: weights lose a bit there only.
    assert {name for name, p in PRESETS.items() if p.config().reduce_range} == {"avx2", "avx512"}
    zen2 = parse_cpuinfo(EPYC_ZEN2, "x86_64")
    assert preset("auto", zen2).reduce_range and not preset("auto", parse_cpuinfo(XEON_AMX, "x86_64")).reduce_range
    assert preset("auto", zen2, reduce_range=False).reduce_range is False  # a setting given wins over the preset


def test_a_named_preset_for_another_cpu_is_allowed_but_warned_about():
    zen2 = parse_cpuinfo(EPYC_ZEN2, "x86_64")
    record = preset_record("avx512_vnni", zen2)
    assert record["chosen"] == "avx512_vnni" and record["fits_cpu"] is False
    assert "'avx512_vnni' does not fit" in record["warning"] and "'avx2'" in record["warning"]
    assert preset_record("avx2", zen2)["fits_cpu"] is True
    with pytest.raises(EdgeQAError, match="unknown hardware preset"):
        preset_record("avx9000", zen2)


def test_model_name_and_flags_are_read_from_the_first_processor():
    text = EPYC_ZEN2 + "\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: avx512_vnni\n"
    cpu = parse_cpuinfo(text, "x86_64")
    assert cpu.model == "AMD EPYC 7B12" and cpu.isa == "avx2"
    assert cpu.to_dict() == {"cpu": "AMD EPYC 7B12", "arch": "x86_64", "isa": "avx2", "flags": ["avx2"]}
