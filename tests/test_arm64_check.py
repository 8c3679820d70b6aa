"""make arm64-check's own logic: logit layout, comparison, report and job commands; natively, no qemu."""

import sys
from pathlib import Path

import numpy as np
import pytest

from edgeqa.bench.files import EdgeQAError, write_json
from edgeqa.export.emulation import arm64_runner
from edgeqa.export.emulation.arm64_check import ARM_PROFILES, PROFILES, Job, job_command, write_u8s8_probe
from edgeqa.export.emulation.arm64_report import (
    PROBE_K,
    assemble_logits,
    compare_runs,
    key_features,
    max_abs_diff,
    probe_expected,
    probe_verdict,
    render_table,
    same_answer_share,
)

INF = np.inf


def test_assemble_logits_pads_with_minus_inf_past_each_window():
    saved = {
        "w0.start": np.array([1.0, 2.0, 3.0], dtype=np.float32),
        "w0.end": np.array([4.0, 5.0, 6.0], dtype=np.float32),
        "w1.start": np.array([7.0], dtype=np.float32),
        "w1.end": np.array([8.0], dtype=np.float32),
    }
    start, end = assemble_logits(saved, [3, 1])
    assert start.tolist() == [[1.0, 2.0, 3.0], [7.0, -INF, -INF]]
    assert end.tolist() == [[4.0, 5.0, 6.0], [8.0, -INF, -INF]]


def test_assemble_logits_refuses_a_window_of_the_wrong_length():
    saved = {"w0.start": np.zeros(4, np.float32), "w0.end": np.zeros(4, np.float32)}
    with pytest.raises(EdgeQAError, match=r"^window 0: logits shaped \(4,\)/\(4,\), expected \(3,\)$"):
        assemble_logits(saved, [3])
    saved = {"w0.start": np.zeros(3, np.float32), "w0.end": np.zeros(4, np.float32)}  # only the end is wrong
    with pytest.raises(EdgeQAError, match=r"^window 0: logits shaped \(3,\)/\(4,\), expected \(3,\)$"):
        assemble_logits(saved, [3])


def test_max_abs_diff_ignores_padding_and_needs_the_same_windows():
    a = np.array([[1.0, 2.0, -INF], [0.0, 0.0, 0.0]])
    b = np.array([[1.5, 2.0, -INF], [0.0, -0.25, 0.0]])
    assert max_abs_diff(a, b) == 0.5
    assert max_abs_diff(a, a) == 0.0
    assert max_abs_diff(np.full((1, 2), -INF), np.full((1, 2), -INF)) == 0.0  # nothing but padding: no difference
    with pytest.raises(EdgeQAError, match="^the two runs disagree on where windows end$"):
        max_abs_diff(a, np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(EdgeQAError, match="shaped"):
        max_abs_diff(a, a[:1])


def test_same_answer_share_counts_exact_text_only():
    ref = {"q1": "Denver Broncos", "q2": "1966", "q3": "Santa Clara"}
    assert same_answer_share(ref, dict(ref)) == 1.0
    assert same_answer_share(ref, {**ref, "q2": "1966 "}) == pytest.approx(2 / 3)  # a space is a different answer
    assert same_answer_share({}, {}) == 1.0
    with pytest.raises(EdgeQAError, match="^the two runs answered different questions$"):
        same_answer_share(ref, {"q1": "Denver Broncos"})
    with pytest.raises(EdgeQAError, match="different questions"):
        same_answer_share(ref, {"q1": "Denver Broncos"})


def test_compare_runs_puts_x86_metrics_beside_the_run():
    start = np.array([[0.0, 1.0]])
    ref = (start, start, {"q": "a"}, {"exact_match": 80.0, "f1": 85.0})
    run = (start + 0.25, start, {"q": "b"}, {"exact_match": 70.0, "f1": 75.0})
    row = compare_runs(ref, run)
    assert row == {
        "same_answer_share": 0.0,
        "max_abs_logit_diff": 0.25,
        "exact_match": 70.0,
        "f1": 75.0,
        "x86_exact_match": 80.0,
        "x86_f1": 85.0,
    }


def test_key_features_keeps_the_int8_relevant_flags_in_order():
    line = "fp asimd aes sme sve asimddp i8mm bf16 sve2"
    assert key_features(line) == "asimddp i8mm sve sve2 sme"
    assert key_features("fp asimd") == "-"


def test_render_table_marks_x86_and_emulated_rows():
    common = {"same_answer_share": 0.9583, "max_abs_logit_diff": 1.17, "exact_match": 75.0, "f1": 80.123}
    common |= {"x86_exact_match": 76.0, "x86_f1": 81.0}
    rows = [
        {"model": "m", "profile": "x86 (native)", "qemu_cpu": None, "cpu_features": "avx512f", **common},
        {"model": "m", "profile": "neoverse-n1", "qemu_cpu": "neoverse-n1", "cpu_features": "fp asimddp", **common},
    ]
    lines = render_table(rows).splitlines()
    assert lines[:2] == [
        "| model | run (QEMU_CPU) | int8 features seen | identical answers vs x86 | max abs logit diff "
        "| EM | F1 | x86 EM | x86 F1 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    assert len(lines) == 4
    assert "| x86 (native) | x86 |" in lines[2]
    assert "| neoverse-n1 (neoverse-n1) | asimddp | 95.8% | 1.17e+00 | 75.00 | 80.12 | 76.00 | 81.00 |" in lines[3]


def test_job_commands_native_and_emulated(tmp_path, monkeypatch):
    monkeypatch.setenv("QEMU_CPU", "leftover")
    (tmp_path / "model.ort").write_bytes(b"")
    write_json(tmp_path / "session.json", {"disabled_optimizers": ["SkipLayerNormFusion"]})
    model = tmp_path / "model.ort"
    cmd, env = job_command(Job("m", model, None), tmp_path / "in.npz", tmp_path / "out.npz", tmp_path / "env")
    assert cmd[0] == sys.executable and "QEMU_CPU" not in env
    assert "--disabled-optimizer=SkipLayerNormFusion" in cmd and "--disable-kleidiai" not in cmd

    sme = PROFILES["sme-no-kleidiai"]
    cmd, env = job_command(Job("m", model, sme), tmp_path / "in.npz", tmp_path / "out.npz", tmp_path / "env")
    assert cmd[0] == str(tmp_path / "env" / "run-python") and env["QEMU_CPU"] == "max"
    assert "--disable-kleidiai" in cmd


def test_profiles_cover_dot_product_and_sme():
    assert PROFILES["neoverse-n1"].qemu_cpu == "neoverse-n1"
    assert PROFILES["sme"].qemu_cpu == PROFILES["sme-no-kleidiai"].qemu_cpu == "max"
    assert PROFILES["sme-no-kleidiai"].disable_kleidiai and not PROFILES["sme"].disable_kleidiai


def test_the_avx2_profile_is_x86_and_not_offered_to_arm64_check():
    avx2 = PROFILES["avx2"]
    assert avx2.target == "x86_64" and avx2.qemu_cpu.startswith("Haswell")
    assert "avx2" not in ARM_PROFILES and {"neoverse-n1", "sme"} <= set(ARM_PROFILES)
    assert all(PROFILES[p].target == "aarch64" for p in ARM_PROFILES)


def test_x86_job_runs_this_venv_under_qemu_x86_64_with_the_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "leftover")
    (tmp_path / "model.onnx").write_bytes(b"")
    job = Job("m", tmp_path / "model.onnx", PROFILES["avx2"])
    probe = tmp_path / "probe.onnx"
    cmd, env = job_command(job, tmp_path / "in.npz", tmp_path / "out.npz", tmp_path / "env", probe)
    assert cmd[:2] == [str(tmp_path / "env" / "qemu" / "usr" / "bin" / "qemu-x86_64"), sys.executable]
    assert cmd[2].endswith("arm64_runner.py")
    assert env["QEMU_CPU"] == "Haswell-noTSX" and "PYTHONPATH" not in env
    assert f"--probe={probe}" in cmd and not any(a.startswith("--disabled-optimizer") for a in cmd)
    native, _ = job_command(Job("m", job.model_path, None), tmp_path / "in.npz", tmp_path / "out.npz", tmp_path)
    assert native[0] == sys.executable and not any(a.startswith("--probe") for a in native)


def test_probe_expected_values_exact_and_saturated():
    # 64 products of 255 x 127: exact 2072640; 32 pairs each saturated to 32767 in int16 (vpmaddubsw).
    assert probe_expected(False) == [PROBE_K * 255 * 127, PROBE_K * 255 * -128, PROBE_K * 255 * 63]
    assert probe_expected(True) == [32 * 32767, 32 * -32768, PROBE_K * 255 * 63]
    assert probe_expected(True)[2] == probe_expected(False)[2]  # 7-bit weights never saturate


def test_probe_verdict_names_exact_saturated_and_anything_else():
    assert probe_verdict(probe_expected(False)) == "exact"
    assert probe_verdict(probe_expected(True)) == "saturated"
    assert probe_verdict([1, 2, 3]) == "unexpected [1, 2, 3]"
    assert probe_verdict(None) == "-"


def _read_cpu():
    """The CPU as /proc/cpuinfo says, ignoring EDGEQA_CPU_FLAGS (which imitates another class for edgeqa's own
    choices, while ONNX Runtime still runs on this processor's kernels)."""
    import platform

    from edgeqa.bench.cpu import parse_cpuinfo

    return parse_cpuinfo(Path("/proc/cpuinfo").read_text(), platform.machine())


def test_probe_runs_natively_as_this_cpu_class_predicts(tmp_path):
    """VNNI/AMX/ARM dot products sum in 32 bits (exact); AVX2 and AVX-512 without VNNI saturate pair sums."""
    probe = write_u8s8_probe(tmp_path / "probe.onnx")
    verdict = probe_verdict(arm64_runner.run_probe(probe, 1))
    isa = _read_cpu().isa
    if isa in ("avx2", "avx512"):
        assert verdict == "saturated"
    elif isa in ("amx_int8", "avx512_vnni", "avx_vnni") or isa.startswith("arm64"):
        assert verdict == "exact"
    else:
        assert verdict in ("exact", "saturated")


def test_cpuid_features_agree_with_proc_cpuinfo_natively():
    import platform

    found = arm64_runner.cpuid_features().split()
    if platform.machine() != "x86_64":
        assert found == []
        return
    assert set(found) <= _read_cpu().flags
    assert ("avx2" in found) == ("avx2" in _read_cpu().flags)


def _echo_model(path):
    """An ONNX graph whose start logits are the input ids and end logits the token types, as floats."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"]) for n in ("input_ids", "token_type_ids")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", "s"]) for n in ("start_logits", "end_logits")]
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["start_logits"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["token_type_ids"], ["end_logits"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "echo", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_runner_round_trip_through_npz(tmp_path):
    _echo_model(tmp_path / "echo.onnx")
    arrays = {"n_windows": np.asarray(2)}
    for i, ids in enumerate(([101, 7, 8, 102], [101, 9, 102])):
        arrays[f"w{i}.input_ids"] = np.asarray(ids, dtype=np.int64)
        arrays[f"w{i}.attention_mask"] = np.ones(len(ids), dtype=np.int64)
        arrays[f"w{i}.token_type_ids"] = np.arange(len(ids), dtype=np.int64)
    np.savez(tmp_path / "in.npz", **arrays)
    info = arm64_runner.run(tmp_path / "in.npz", tmp_path / "echo.onnx", tmp_path / "out.npz", 1, [], False)
    assert info["windows"] == 2 and info["disable_kleidiai"] is False
    with np.load(tmp_path / "out.npz") as saved:
        start, end = assemble_logits(saved, [4, 3])
    assert start.tolist() == [[101, 7, 8, 102], [101, 9, 102, -INF]]
    assert end.tolist() == [[0, 1, 2, 3], [0, 1, 2, -INF]]
    assert (tmp_path / "out.json").exists() and "probe_output" not in info


def test_runner_records_the_probe_output(tmp_path):
    _echo_model(tmp_path / "echo.onnx")
    ids = np.asarray([101, 102], dtype=np.int64)
    np.savez(tmp_path / "in.npz", n_windows=np.asarray(1), **{"w0.input_ids": ids, "w0.token_type_ids": ids})
    probe = write_u8s8_probe(tmp_path / "probe.onnx")
    info = arm64_runner.run(tmp_path / "in.npz", tmp_path / "echo.onnx", tmp_path / "out.npz", 1, [], False, probe)
    assert probe_verdict(info["probe_output"]) in ("exact", "saturated")
