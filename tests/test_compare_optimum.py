"""The Optimum comparison (`make compare-optimum`): Optimum's documented path, the preset per CPU, the side-by-side
record and the command line. Optimum is an optional extra, so its classes are stood in for by ones that record how
they are called and write the files Optimum's would."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from edgeqa.bench import compare_optimum
from edgeqa.bench.cpu import CPU
from edgeqa.bench.evaluate import evaluate
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.latency import LatencyConfig


@pytest.fixture
def fake_optimum(monkeypatch, onnx_dir):
    """optimum.onnxruntime stood in for: export copies the tiny ONNX model, quantization copies it again under
    Optimum's output name; every call is recorded."""
    calls: list[tuple] = []

    class Model:
        @staticmethod
        def from_pretrained(path, export=False):
            calls.append(("export", path, export))
            return SimpleNamespace(save_pretrained=lambda d: shutil.copytree(onnx_dir, d))

    class Quantizer:
        @staticmethod
        def from_pretrained(folder):
            calls.append(("quantizer", Path(folder).name, sorted(p.name for p in Path(folder).iterdir())))

            def quantize(save_dir, quantization_config):
                calls.append(("quantize", Path(save_dir), quantization_config))
                shutil.copy(Path(folder) / "model.onnx", Path(save_dir) / "model_quantized.onnx")

            return SimpleNamespace(quantize=quantize)

    class AutoQuantizationConfig:
        pass

    for preset in ("arm64", "avx2", "avx512", "avx512_vnni"):
        setattr(AutoQuantizationConfig, preset, staticmethod(lambda is_static, p=preset: (p, is_static)))
    runtime = ModuleType("optimum.onnxruntime")
    runtime.ORTModelForQuestionAnswering, runtime.ORTQuantizer = Model, Quantizer
    configuration = ModuleType("optimum.onnxruntime.configuration")
    configuration.AutoQuantizationConfig = AutoQuantizationConfig
    monkeypatch.setitem(sys.modules, "optimum", ModuleType("optimum"))
    monkeypatch.setitem(sys.modules, "optimum.onnxruntime", runtime)
    monkeypatch.setitem(sys.modules, "optimum.onnxruntime.configuration", configuration)
    return calls


def test_optimum_int8_follows_optimums_documented_path(fake_optimum, tiny_onnx_model, tmp_path):
    teacher = tiny_onnx_model[0]
    out = tmp_path / "optimum-int8-avx2"
    assert compare_optimum.optimum_int8(teacher, out, "avx2") == out
    export, quantizer, quantize = fake_optimum
    assert export == ("export", str(teacher), True)
    assert quantizer[:2] == ("quantizer", "fp32") and "model.onnx" in quantizer[2]
    assert quantize[1].parent == tmp_path and quantize[1] != out  # into the temporary folder, renamed at the end
    assert quantize[2] == ("avx2", False)  # the preset asked for, dynamic
    files = {p.name for p in out.iterdir()}
    assert "model.onnx" in files and "tokenizer_config.json" in files
    assert not {"fp32", "model_quantized.onnx"} & files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimum-int8-avx2"]


def test_optimum_int8_reuses_a_finished_model(tmp_path, monkeypatch):
    out = tmp_path / "optimum"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"made before")
    monkeypatch.setitem(sys.modules, "optimum", None)  # importing Optimum would now fail
    assert compare_optimum.optimum_int8(tmp_path / "teacher", out, "avx2") == out
    assert (out / "model.onnx").read_bytes() == b"made before"


def test_a_failed_optimum_quantization_leaves_nothing(fake_optimum, tiny_onnx_model, tmp_path, monkeypatch):
    def refuse(is_static):
        raise RuntimeError("no such preset")

    monkeypatch.setattr(sys.modules["optimum.onnxruntime.configuration"].AutoQuantizationConfig, "avx2", refuse)
    with pytest.raises(RuntimeError, match="no such preset"):
        compare_optimum.optimum_int8(tiny_onnx_model[0], tmp_path / "optimum", "avx2")
    assert list(tmp_path.iterdir()) == []


def test_each_cpu_class_gets_the_optimum_preset_its_user_would_pick():
    """Optimum's AutoQuantizationConfig has arm64, avx2, avx512 and avx512_vnni presets and none for AMX or
    AVX-VNNI: those take the nearest below (AVX-VNNI is a 256-bit extension of AVX2)."""
    assert compare_optimum.OPTIMUM_PRESETS == {
        "amx_int8": "avx512_vnni",
        "avx512_vnni": "avx512_vnni",
        "avx512": "avx512",
        "avx_vnni": "avx2",
        "avx2": "avx2",
        "other": "avx2",
        "arm64_i8mm": "arm64",
        "arm64_dotprod": "arm64",
        "arm64": "arm64",
    }


def _stand_ins(monkeypatch, tmp_path, onnx_dir, p50: dict[str, float]) -> dict:
    """Optimum's model as a copy of ours, the timing as given p50s; what each was asked is returned."""
    asked: dict = {}

    def optimum_int8(teacher, out, preset):
        asked["optimum"] = (teacher, out, preset)
        shutil.copytree(onnx_dir, out)
        return out

    def benchmark_interleaved(models, cfg):
        asked["timed"] = (models, cfg)
        shape = {"batch_size": 1, "seq_len": 384, "samples_ms": [1.0], "p90_ms": 9.0}
        return {name: {"latency": [{**shape, "p50_ms": p50[name]}]} for name in models}

    monkeypatch.setattr(compare_optimum, "optimum_int8", optimum_int8)
    monkeypatch.setattr(compare_optimum, "benchmark_interleaved", benchmark_interleaved)
    monkeypatch.setattr(compare_optimum, "this_cpu", lambda: CPU("Xeon", "x86_64", frozenset({"avx2", "amx_int8"})))
    return asked


def test_compare_times_both_side_by_side_and_scores_both(monkeypatch, tmp_path, onnx_dir, toy_squad):
    asked = _stand_ins(monkeypatch, tmp_path, onnx_dir, {"edgeqa": 4.0, "optimum": 5.0})
    cfg = LatencyConfig(batch_sizes=(1,), seq_lens=(384,), repeats=6, threads=1, rounds=3)
    out = tmp_path / "out"
    result = compare_optimum.compare(tmp_path / "teacher", onnx_dir, str(toy_squad), 2, out, cfg)
    theirs = out / "optimum-int8-avx512_vnni"
    assert asked["optimum"] == (tmp_path / "teacher", theirs, "avx512_vnni")  # the AMX machine's preset
    assert asked["timed"] == ({"edgeqa": (onnx_dir, False), "optimum": (theirs, False)}, cfg)
    alone = evaluate(onnx_dir, toy_squad, 2, threads=1, progress=False)
    assert result["f1"] == {"edgeqa": round(alone["f1"], 3), "optimum": round(alone["f1"], 3)}
    assert result["exact_match"] == {"edgeqa": round(alone["exact_match"], 3)} | {
        "optimum": round(alone["exact_match"], 3)
    }
    assert result["eval"] == {"data": str(toy_squad), "limit": 2, "questions": 2}
    assert result["scored_batch_size"] == {"edgeqa": alone["batch_size"], "optimum": alone["batch_size"]}
    assert result["p50_ms"] == {"edgeqa": 4.0, "optimum": 5.0}
    assert result["speedup_over_optimum"] == 1.25  # 5.0 / 4.0
    assert result["latency"]["edgeqa"] == {"batch_size": 1, "seq_len": 384, "p90_ms": 9.0, "p50_ms": 4.0}
    assert result["shape"] == {"batch_size": 1, "seq_len": 384, "threads": 1}
    assert result["models"] == {"edgeqa": str(onnx_dir), "optimum": str(theirs)}
    assert result["optimum_preset"] == "avx512_vnni" and "cpu" in result["machine"] and "numpy" in result["versions"]
    assert json.loads((out / "compare.json").read_text()) == result
    for name in ("edgeqa", "optimum"):
        assert json.loads((out / "eval" / name / "metrics.json").read_text())["total"] == 2


def test_a_named_preset_replaces_the_cpus(monkeypatch, tmp_path, onnx_dir, toy_squad):
    asked = _stand_ins(monkeypatch, tmp_path, onnx_dir, {"edgeqa": 3.0, "optimum": 2.0})
    cfg = LatencyConfig(batch_sizes=(1,), seq_lens=(384,), repeats=1, threads=1)
    result = compare_optimum.compare(tmp_path / "t", onnx_dir, str(toy_squad), 1, tmp_path / "o", cfg, "avx2")
    assert asked["optimum"][1:] == (tmp_path / "o" / "optimum-int8-avx2", "avx2")
    assert result["optimum_preset"] == "avx2" and result["speedup_over_optimum"] == 0.667  # 2.0 / 3.0


def test_the_command_line_reaches_compare(monkeypatch, tmp_path, capsys):
    asked = {}

    def compare(teacher, ours, data, limit, out, cfg, preset):
        asked.update(teacher=teacher, ours=ours, data=data, limit=limit, out=out, cfg=cfg, preset=preset)
        return {"p50_ms": {"edgeqa": 2.0, "optimum": 3.0}, "speedup_over_optimum": 1.5, "optimum_preset": "avx2",
                "f1": {"edgeqa": 80.123, "optimum": 79.5}}  # fmt: skip

    monkeypatch.setattr(compare_optimum, "compare", compare)
    assert compare_optimum.main(["--ours", "m"]) == 0
    assert asked == {
        "teacher": Path("../shared/models/minilm-l6-h384-squad1"),
        "ours": Path("m"),
        "data": "../shared/data/squad/dev-v1.1.json.gz",
        "limit": None,
        "out": Path("runs/compare-optimum"),
        "cfg": LatencyConfig(batch_sizes=(1,), seq_lens=(384,), repeats=200, threads=2, rounds=10),
        "preset": "auto",
    }
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "p50 ms: edgeqa 2.00, optimum 3.00 (1.50x, Optimum preset avx2); F1: edgeqa 80.12, optimum 79.50"
    assert json.loads(lines[1])["speedup_over_optimum"] == 1.5
    argv = ["--ours", "m", "--teacher", "t", "--data", "d", "--limit", "5", "--rounds", "2", "--repeats", "8",
            "--threads", "1", "--out", "o", "--preset", "arm64"]  # fmt: skip
    assert compare_optimum.main(argv) == 0
    assert asked == {"teacher": Path("t"), "ours": Path("m"), "data": "d", "limit": 5, "out": Path("o"),
                     "cfg": LatencyConfig(batch_sizes=(1,), seq_lens=(384,), repeats=8, threads=1, rounds=2),
                     "preset": "arm64"}  # fmt: skip
    assert compare_optimum.main(["--ours", "m", "--preset", "auto"]) == 0 and asked["preset"] == "auto"
    with pytest.raises(SystemExit):
        compare_optimum.main(["--ours", "m", "--preset", "amx"])  # not one of Optimum's presets
    with pytest.raises(SystemExit):
        compare_optimum.main([])  # the model to compare is required


def test_a_refused_comparison_is_one_line_and_exit_2(monkeypatch, capsys):
    def refuse(*args):
        raise EdgeQAError("m/model.onnx: not an ONNX model")

    monkeypatch.setattr(compare_optimum, "compare", refuse)
    assert compare_optimum.main(["--ours", "m"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "compare_optimum: error: m/model.onnx: not an ONNX model\n" and captured.out == ""


def test_scores_are_rounded_to_three_places_on_the_timing_threads(monkeypatch, tmp_path, onnx_dir):
    _stand_ins(monkeypatch, tmp_path, onnx_dir, {"edgeqa": 4.0, "optimum": 5.0})
    asked = []

    def evaluate(path, data, limit, threads, out_dir):
        asked.append((Path(path).name, threads, out_dir.name))
        return {"f1": 81.23456, "exact_match": 70.12345, "batch_size": 1, "total": 7}

    monkeypatch.setattr(compare_optimum, "evaluate", evaluate)
    cfg = LatencyConfig(batch_sizes=(1,), seq_lens=(384,), repeats=1, threads=3)
    result = compare_optimum.compare(tmp_path / "t", onnx_dir, "d", None, tmp_path / "o", cfg)
    assert asked == [(onnx_dir.name, 3, "edgeqa"), ("optimum-int8-avx512_vnni", 3, "optimum")]
    assert result["f1"] == {"edgeqa": 81.235, "optimum": 81.235}
    assert result["exact_match"] == {"edgeqa": 70.123, "optimum": 70.123}
    assert result["eval"] == {"data": "d", "limit": None, "questions": 7}
