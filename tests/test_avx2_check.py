"""make avx2-check's own logic: the four quantized variants and the report table; natively, no qemu."""

import json

import pytest

from edgeqa.export.emulation import avx2_check
from edgeqa.export.emulation.avx2_check import VARIANTS, X86_PROFILES, ensure_variants, render_table


def test_variants_cover_both_weight_widths_and_both_scale_granularities():
    combos = {(v["per_channel"], v["reduce_range"]) for v in VARIANTS.values()}
    assert combos == {(True, False), (True, True), (False, False), (False, True)}
    assert X86_PROFILES == ("avx2",)


def test_ensure_variants_quantizes_with_the_avx2_preset_and_each_override(tmp_path, monkeypatch):
    import edgeqa.export.quantize as q

    made = {}

    def fake_quantize(base, folder, cfg, preset_info=None):
        made[folder.name] = (base, cfg, preset_info["chosen"])
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"")
        return folder

    monkeypatch.setattr(avx2_check, "quantize", fake_quantize)
    base = tmp_path / "fused"
    models = ensure_variants(base, tmp_path / "out")
    assert models == {name: tmp_path / "out" / name / "model.onnx" for name in VARIANTS}
    for name, overrides in VARIANTS.items():
        source, cfg, chosen = made[name]
        assert source == base and chosen == "avx2" and cfg.mode == "dynamic"
        assert (cfg.per_channel, cfg.reduce_range) == (overrides["per_channel"], overrides["reduce_range"])
        # The avx2 preset's other settings: SkipLayerNorm fusion stays on.
        assert cfg.runtime_disabled_optimizers == q.preset("avx2").runtime_disabled_optimizers
    made.clear()
    assert ensure_variants(base, tmp_path / "out") == models and made == {}  # made ones are reused


def test_ensure_variants_makes_real_models(exported, tmp_path):
    models = ensure_variants(exported, tmp_path / "out")
    for name, path in models.items():
        saved = json.loads((path.parent / "quantization.json").read_text())
        assert path.exists() and saved["preset"]["chosen"] == "avx2"
        assert (saved["per_channel"], saved["reduce_range"]) == tuple(VARIANTS[name].values())


@pytest.fixture
def exported(tiny_qa_model, toy_squad, tmp_path):
    from edgeqa.bench.squad import load_squad
    from edgeqa.export.onnx import export_onnx

    return export_onnx(tiny_qa_model, tmp_path / "onnx", parity_examples=load_squad(toy_squad).examples)


def test_render_table_describes_each_variant_and_run():
    common = {"same_answer_share": 0.875, "max_abs_logit_diff": 2.5, "exact_match": 70.0, "f1": 80.0}
    common |= {"x86_exact_match": 75.0, "x86_f1": 85.5}
    rows = [
        {"model": "int8-w8-per-tensor", "profile": "x86 (native)", "qemu_cpu": None, **common}
        | {"cpuid_features": "avx2 avx512f avx512bw avx512_vnni", "u8s8_probe": "exact"},
        {"model": "int8-w7-per-channel", "profile": "avx2", "qemu_cpu": "Haswell-noTSX", **common}
        | {"cpuid_features": "avx2", "u8s8_probe": "saturated"},
    ]
    lines = render_table([*rows, {**rows[1], "cpuid_features": ""}]).splitlines()
    assert lines[:2] == [
        "| variant | weights | scales | run (QEMU_CPU) | cpuid int8 features | u8s8 pair sums "
        "| identical answers vs native | max abs logit diff | EM | F1 | native EM | native F1 |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    assert len(lines) == 5 and lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert "| avx2 (Haswell-noTSX) | - | saturated |" in lines[4]  # no cpuid features seen (off x86)
    assert lines[2].startswith("| int8-w8-per-tensor | 8-bit | per-tensor | native | avx2 avx512f")
    assert lines[3] == (
        "| int8-w7-per-channel | 7-bit | per-channel | avx2 (Haswell-noTSX) | avx2 | saturated "
        "| 87.5% | 2.50e+00 | 70.00 | 80.00 | 75.00 | 85.50 |"
    )


def test_main_fails_cleanly_without_the_emulator(tmp_path, capsys):
    assert avx2_check.main(["--env", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "scripts/arm64-env.sh qemu" in capsys.readouterr().err
