"""Quantization settings without quantizing: the config's checks and JSON round trip, the hardware presets and the
CPU each fits, and node exclusions by glob (export.quantize)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeqa.bench.cpu import CPU
from edgeqa.bench.files import EdgeQAError
from edgeqa.export.quantize import (
    PRESETS,
    Preset,
    QuantizeConfig,
    excluded_nodes,
    preset,
    preset_for,
    preset_for_isa,
    preset_record,
    register_preset,
)


def test_config_round_trips_through_json_lists():
    cfg = QuantizeConfig(mode="static", exclude=("*qa_outputs*",), op_types=("MatMul",), reduce_range=True)
    raw = cfg.to_dict()
    assert raw["exclude"] == ["*qa_outputs*"] and raw["op_types"] == ["MatMul"] and raw["mode"] == "static"
    assert QuantizeConfig.from_dict(raw) == cfg


def test_the_defaults_are_dynamic_full_range_per_channel_int8():
    assert QuantizeConfig().to_dict() == {
        "mode": "dynamic", "per_channel": True, "reduce_range": False, "symmetric_activations": False,
        "op_types": [], "exclude": [], "calibration_method": "minmax", "calibration_samples": 256,
        "calibration_percentile": 99.999, "runtime_disabled_optimizers": [],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "qat"}, r"quantize mode must be one of \('dynamic', 'static'\), got 'qat'"),
        (
            {"calibration_method": "mse"},
            r"calibration method must be one of \('minmax', 'entropy', 'percentile'\), got",
        ),
        ({"calibration_samples": 0}, "^calibration_samples must be positive$"),
        ({"per_channel": "yes"}, "^quantize.per_channel should be bool, got 'yes'$"),  # types are checked
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(EdgeQAError, match=message):
        QuantizeConfig(**settings)


def test_the_smallest_calibration_and_every_mode_and_method_are_accepted():
    QuantizeConfig(calibration_samples=1)
    for mode in ("dynamic", "static"):
        for method in ("minmax", "entropy", "percentile"):
            assert QuantizeConfig(mode=mode, calibration_method=method).calibration_method == method


def _cpu(*flags, arch="x86_64"):
    return CPU("Test CPU", arch, frozenset(flags))


@pytest.mark.parametrize(
    ("cpu", "fits"),
    [
        (_cpu("avx2", "avx512bw", "avx512_vnni", "amx_int8"), "amx"),
        (_cpu("avx2", "avx512bw", "avx512_vnni"), "avx512_vnni"),
        (_cpu("avx2", "avx_vnni"), "avx_vnni"),
        (_cpu("avx2", "avx512bw"), "avx512"),
        (_cpu("avx2"), "avx2"),
        (_cpu(), "avx2"),  # below AVX2: 7-bit weights are safe anywhere
        (_cpu("asimddp", "i8mm", arch="aarch64"), "arm64"),
        (_cpu("asimddp", arch="aarch64"), "arm64"),
        (_cpu(arch="aarch64"), "arm64"),
    ],
)
def test_each_cpu_gets_the_preset_of_its_int8_instructions(cpu, fits):
    assert preset_for(cpu) == fits
    assert preset_record("auto", cpu) == {"asked": "auto", "chosen": fits, "fits_cpu": True, "cpu": cpu.to_dict(),
                                          "description": f"{fits} (chosen for a CPU of class {cpu.isa})"}  # fmt: skip


def test_a_preset_is_registered_once_and_every_cpu_class_has_one():
    assert set(preset_for_isa()) == {"amx_int8", "avx512_vnni", "avx_vnni", "avx512", "avx2", "other", "arm64_i8mm",
                                     "arm64_dotprod", "arm64"}  # fmt: skip
    toy = Preset("toy-avx2", ("avx2",), (("reduce_range", False),), "a second preset for avx2")
    with pytest.raises(ValueError, match=r"registered twice"):
        register_preset(toy)  # avx2 already has its preset: `auto` would not know which
    assert "toy-avx2" not in PRESETS


def test_a_new_preset_is_one_registration(monkeypatch):
    monkeypatch.setattr("edgeqa.export.quantize.PRESETS", dict(PRESETS))
    register_preset(Preset("riscv", ("riscv_v",), (("reduce_range", True), ("per_channel", False)), "why"))
    riscv = _cpu(arch="riscv64")
    monkeypatch.setattr(type(riscv), "isa", property(lambda self: "riscv_v"))
    assert preset_for(riscv) == "riscv" and preset("auto", riscv) == QuantizeConfig(
        reduce_range=True, per_channel=False
    )
    assert preset_record("auto", riscv)["description"] == "riscv (chosen for a CPU of class riscv_v)"


def test_presets_keep_8_bit_weights_only_where_products_sum_in_32_bits():
    for name in ("amx", "avx512_vnni", "avx_vnni", "arm64"):
        assert preset(name, _cpu()).reduce_range is False, name
    for name in ("avx512", "avx2"):
        assert preset(name, _cpu()).reduce_range is True, name
    assert all(preset(name, _cpu()).per_channel for name in PRESETS)
    assert preset("amx", _cpu()).runtime_disabled_optimizers == ("SkipLayerNormFusion",)
    assert preset("avx512_vnni", _cpu()).runtime_disabled_optimizers == ("SkipLayerNormFusion",)
    assert preset("avx2", _cpu()).runtime_disabled_optimizers == ()
    assert preset("auto", _cpu("avx2"), mode="static", reduce_range=False) == QuantizeConfig(
        mode="static", per_channel=True, reduce_range=False
    )  # overrides win over the preset


def test_a_preset_for_another_machine_is_allowed_but_recorded_with_a_warning():
    vnni = _cpu("avx2", "avx512bw", "avx512_vnni")
    record = preset_record("arm64", vnni)
    assert (record["asked"], record["chosen"], record["fits_cpu"]) == ("arm64", "arm64", False)
    assert record["description"] == "arm64 (named, made on a CPU of class avx512_vnni, does not fit it)"
    assert record["warning"] == (
        "preset 'arm64' does not fit this CPU (Test CPU, int8 class avx512_vnni), which would get 'avx512_vnni'; "
        "its speed and accuracy here are not those of the machines it is meant for"
    )
    assert "warning" not in preset_record("avx512_vnni", vnni)
    with pytest.raises(EdgeQAError, match=r"unknown hardware preset 'vnni'; choose one of auto, amx, avx512_vnni, "):
        preset_record("vnni", vnni)


def test_auto_reads_this_cpu_when_none_is_given(monkeypatch):
    monkeypatch.setattr("edgeqa.export.quantize.this_cpu", lambda: _cpu("avx2", "avx512bw"))
    assert preset_record("auto")["chosen"] == "avx512"
    assert preset("auto").reduce_range is True


def _graph(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="/encoder/layer.0/Relu"),
        helper.make_node("Relu", ["a"], ["b"], name="/qa_outputs/MatMul"),
        helper.make_node("Relu", ["b"], ["y"], name="/qa_outputs/Add"),
    ]
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y])), str(path))
    return path


def test_exclusions_expand_globs_to_node_names_once_each(tmp_path):
    path = _graph(tmp_path)
    assert excluded_nodes(path, ("*qa_outputs*",)) == ["/qa_outputs/MatMul", "/qa_outputs/Add"]
    assert excluded_nodes(path, ("*Add", "*qa_outputs*", "/encoder/*")) == [
        "/qa_outputs/Add", "/qa_outputs/MatMul", "/encoder/layer.0/Relu"
    ]  # fmt: skip
    assert excluded_nodes(tmp_path / "absent.onnx", ()) == []  # nothing to exclude: the model is not read
    with pytest.raises(EdgeQAError, match=r"model.onnx: exclude pattern '\*Softmax\*' matches no node"):
        excluded_nodes(path, ("*qa_outputs*", "*Softmax*"))
    with pytest.raises(EdgeQAError, match="matches no node"):
        excluded_nodes(path, ("*relu",))  # case matters, as in node names


def test_unknown_settings_are_named_with_what_they_belong_to():
    with pytest.raises(EdgeQAError, match=r"^unknown quantization setting\(s\): bogus \(allowed: calibration_method,"):
        QuantizeConfig.from_dict({"mode": "dynamic", "bogus": 1})


def test_a_named_cpu_decides_auto_whatever_this_machine_is(monkeypatch):
    monkeypatch.setattr("edgeqa.export.quantize.this_cpu", lambda: _cpu())  # this machine: below AVX2
    vnni = preset("auto", _cpu("avx2", "avx512bw", "avx512_vnni"))
    assert vnni.reduce_range is False and vnni.runtime_disabled_optimizers == ("SkipLayerNormFusion",)


def test_exclusions_read_node_names_without_the_weights(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    w = numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="/qa_outputs/MatMul")], "g", [x],
                              [y], [w])  # fmt: skip
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, location="weights.data",
              size_threshold=0)  # fmt: skip
    (tmp_path / "weights.data").unlink()  # a large model's weights are never read for this
    assert excluded_nodes(path, ("*qa_outputs*",)) == ["/qa_outputs/MatMul"]
