"""Latency measurement: settings checks and interleaved passes merged into one set of percentiles."""

from pathlib import Path

import numpy as np
import pytest

from edgeqa.bench import latency
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.latency import LatencyConfig, benchmark_interleaved, machine_info, peak_rss_mb
from edgeqa.bench.qa import QAConfig


def test_interleaved_passes_merge_all_runs(tiny_qa_model, tmp_path):
    cfg = LatencyConfig(batch_sizes=(1, 2), seq_lens=(16,), warmup=1, repeats=6, threads=1, rounds=3)
    seen = []
    results = benchmark_interleaved(
        {"fp32": (tiny_qa_model, False), "int8": (tiny_qa_model, True)}, cfg, done=lambda n, r: seen.append(n)
    )
    assert seen == ["fp32", "int8"]
    for name, result in results.items():
        assert [(s["batch_size"], s["runs"]) for s in result["latency"]] == [(1, 6), (2, 6)]
        s = result["latency"][1]
        assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]
        assert s["throughput"] == pytest.approx(1e3 * 2 / s["mean_ms"])
        assert result["settings"]["rounds"] == 3 and result["settings"]["torch_int8"] == (name == "int8")
    assert results["int8"]["backend"] == "torch-int8"


def test_settings_round_trip_through_json():
    import json

    cfg = LatencyConfig(batch_sizes=(1, 4), seq_lens=(128,), rounds=3, torch_int8=True, questions=0)
    assert LatencyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert LatencyConfig().questions == 100 and cfg.to_dict()["questions"] == 0
    with pytest.raises(EdgeQAError, match="unknown bench setting"):
        LatencyConfig.from_dict({"turbo": True})


def test_this_process_reads_its_machine_and_peak_memory():
    info = machine_info()
    assert info["logical_cores"] >= 1 and isinstance(info["avx512_vnni"], bool)
    assert peak_rss_mb() > 10


# --- the statistics and the bookkeeping, on fakes whose numbers are known by hand -----------------------------------


def test_passes_pool_their_runs_and_say_how_far_their_medians_moved():
    """Three passes of 1-3, 4-6 and 7-9 ms: pooled, the 9 runs give p50 5, p90 1 + 0.9 x 8 = 8.2, p99 1 + 0.99 x 8 =
    8.92 (numpy's linear interpolation at rank (n - 1) q), mean 5, so 2 / 0.005 s = 400 sequences a second at batch 2;
    the passes' medians 2, 5 and 8 spread (8 - 2) / 5 = 1.2. One pass has no spread to judge."""
    passes = [{"batch_size": 2, "seq_len": 16, "p50_ms": p, "samples_ms": [p - 1, p, p + 1]} for p in (2.0, 5.0, 8.0)]
    merged = latency._merge_passes(passes)
    assert (merged["batch_size"], merged["seq_len"], merged["runs"]) == (2, 16, 9)
    assert merged["p50_ms"] == pytest.approx(5.0) and merged["mean_ms"] == pytest.approx(5.0)
    assert merged["p90_ms"] == pytest.approx(8.2) and merged["p99_ms"] == pytest.approx(8.92)
    assert merged["throughput"] == pytest.approx(400.0)
    assert merged["pass_p50_ms"] == [2.0, 5.0, 8.0] and merged["pass_spread"] == pytest.approx(1.2)
    assert merged["samples_ms"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert latency._merge_passes(passes[:1])["pass_spread"] is None


def test_interleaving_times_every_model_in_each_pass_and_merges_after_the_last(monkeypatch):
    """10 repeats over 3 rounds: each pass times ceil(10 / 3) = 4 runs of every model, in the order a, b, a, b, a, b;
    each model is reported once all passes are over, with its own torch_int8 and the largest peak memory of its
    passes."""
    calls = []

    def fake_subprocess(model, cfg, data=None, qa=None):
        calls.append((model, cfg.repeats, cfg.rounds, cfg.torch_int8))
        rss = 100.0 + len(calls)
        lat = {"batch_size": 1, "seq_len": 8, "p50_ms": 3.0, "samples_ms": [3.0] * cfg.repeats}
        return {"model": model, "peak_rss_mb": rss, "settings": {}, "latency": [lat]}

    monkeypatch.setattr(latency, "benchmark_subprocess", fake_subprocess)
    done = []
    cfg = LatencyConfig(batch_sizes=(1,), seq_lens=(8,), repeats=10, rounds=3)
    results = latency.benchmark_interleaved(
        {"a": ("A", False), "b": ("B", True)}, cfg, done=lambda name, r: done.append((name, len(calls)))
    )
    assert calls == [("A", 4, 1, False), ("B", 4, 1, True)] * 3
    assert done == [("a", 6), ("b", 6)]
    assert results["a"]["peak_rss_mb"] == 105.0 and results["b"]["peak_rss_mb"] == 106.0
    assert results["a"]["settings"] == cfg.to_dict() and results["b"]["settings"]["torch_int8"] is True
    assert results["a"]["latency"][0]["runs"] == 12 and results["a"]["latency"][0]["pass_p50_ms"] == [3.0] * 3
    assert results["a"]["questions"] is None  # no data: nothing timed per question


def test_every_pass_times_the_same_questions_and_the_passes_are_pooled(monkeypatch):
    """Two passes over two models, each given the data and windows: each pass times all 3 questions (1, 2 and 3 ms,
    then 3, 4 and 5), which pool to 6 runs with p50 3 and pass medians 2 and 4, spread (4 - 2) / 3 = 0.6667."""
    calls = []

    def fake_subprocess(model, cfg, data=None, qa=None):
        calls.append((model, cfg.questions, data, qa))
        base = 2.0 * sum(1 for c in calls if c[0] == model) - 1
        lat = {"batch_size": 1, "seq_len": 8, "p50_ms": 3.0, "samples_ms": [3.0] * cfg.repeats}
        q = {"questions": 3, "windows": 3, "p50_ms": base + 1, "samples_ms": [base, base + 1, base + 2],
             "stage_ms": {"tokenize": 1.0, "model": 2.0, "spans": 1.0}}  # fmt: skip
        return {"model": model, "peak_rss_mb": 1.0, "latency": [lat], "questions": q}

    monkeypatch.setattr(latency, "benchmark_subprocess", fake_subprocess)
    qa = QAConfig(max_length=64, doc_stride=16)
    cfg = LatencyConfig(batch_sizes=(1,), seq_lens=(8,), repeats=4, rounds=2, questions=3)
    results = latency.benchmark_interleaved({"a": ("A", False), "b": ("B", False)}, cfg, data="dev.json", qa=qa)
    assert calls == [("A", 3, "dev.json", qa), ("B", 3, "dev.json", qa)] * 2
    q = results["b"]["questions"]
    assert q["samples_ms"] == [1.0, 2.0, 3.0, 3.0, 4.0, 5.0] and q["runs"] == 6 and q["p50_ms"] == 3.0
    assert q["pass_p50_ms"] == [2.0, 4.0] and q["pass_spread"] == 0.6667 and q["questions"] == 3
    assert q["stage_ms"] == {"tokenize": 2.0, "model": 4.0, "spans": 2.0}


class _Tokenizer:
    def __init__(self, cls_token_id):
        self.cls_token_id = cls_token_id

    def __len__(self):
        return 1000


class _Engine:
    backend = "fake"

    def __init__(self, input_names):
        self.input_names = input_names
        self.seen = []

    def __call__(self, inputs):
        self.seen.append(inputs)


@pytest.mark.parametrize(("cls_token_id", "first"), [(101, 101), (None, 0)])
def test_a_benchmark_times_every_shape_of_its_settings(monkeypatch, tmp_path, cls_token_id, first):
    """Batches (1, 2) x lengths (8, 4), in that order, each with 2 warm-up and 3 timed calls, fed only the inputs
    the model takes; ids start with the tokenizer's [CLS] (0 where it has none) and the rest are drawn from the top
    nine tenths of the 1,000-token vocabulary; the model's size is its weight file's 1,234 bytes."""
    (tmp_path / "model.onnx").write_bytes(b"x" * 1234)
    engine = _Engine(["input_ids", "attention_mask"])
    loaded = []

    def load(model, threads, torch_int8):
        loaded.append((str(model), threads, torch_int8))
        return type("QA", (), {"engine": engine, "tokenizer": _Tokenizer(cls_token_id)})()

    monkeypatch.setattr(latency, "load_qa_model", load)
    cfg = LatencyConfig(batch_sizes=(1, 2), seq_lens=(8, 4), warmup=2, repeats=3, threads=1, torch_int8=True)
    result = latency.benchmark(tmp_path, cfg)
    assert loaded == [(str(tmp_path), 1, True)]
    assert [(s["batch_size"], s["seq_len"], s["runs"]) for s in result["latency"]] == [
        (1, 8, 3), (1, 4, 3), (2, 8, 3), (2, 4, 3)]  # fmt: skip
    assert len(engine.seen) == 4 * (2 + 3)
    assert all(sorted(inputs) == ["attention_mask", "input_ids"] for inputs in engine.seen)
    ids, mask = engine.seen[-1]["input_ids"], engine.seen[-1]["attention_mask"]
    assert ids.shape == (2, 4) and ids.dtype == np.int64 and (ids[:, 0] == first).all()
    assert (ids[:, 1:] >= 100).all() and (ids < 1000).all() and (mask == 1).all()
    assert result["model"] == str(tmp_path) and result["backend"] == "fake" and result["file_bytes"] == 1234
    assert result["settings"] == cfg.to_dict() and result["peak_rss_mb"] > 10
    assert result["machine"]["logical_cores"] >= 1 and "numpy" in result["versions"]
    assert result["questions"] is None  # no data given: nothing timed per question


def test_a_failed_benchmark_names_the_model_and_the_last_line_it_printed(tmp_path):
    with pytest.raises(EdgeQAError, match=rf"{tmp_path / 'nothing'}: benchmark failed: edgeqa: error: .*nothing"):
        latency.benchmark_subprocess(tmp_path / "nothing", LatencyConfig(repeats=1, warmup=0))


POSITIVE = "bench settings: batch sizes, sequence lengths, repeats and threads must be positive"


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"threads": 0}, POSITIVE), ({"rounds": 0}, POSITIVE), ({"repeats": 0}, POSITIVE), ({"batch_sizes": ()}, POSITIVE),
     ({"batch_sizes": (1, 0)}, POSITIVE), ({"seq_lens": ()}, POSITIVE), ({"seq_lens": (128, -1)}, POSITIVE),
     ({"warmup": -1}, "bench settings: warmup must be a whole number >= 0"),
     ({"questions": -1}, "bench settings: questions must be a whole number >= 0"),
     ({"questions": 2.5}, "bench.questions should be int, got 2.5"),
     ({"repeats": 1.5}, "bench.repeats should be int, got 1.5"),
     ({"threads": "2"}, "bench.threads should be int, got '2'")],
)  # fmt: skip
def test_each_count_of_the_settings_is_checked(settings, message):
    with pytest.raises(EdgeQAError) as e:
        LatencyConfig(**settings)
    assert str(e.value) == message
    assert LatencyConfig(warmup=0, repeats=1, threads=1, rounds=1, questions=0).warmup == 0  # the smallest allowed


def test_two_passes_have_a_spread_and_figures_keep_four_decimals():
    """Medians 3 and 4: spread 1 / 3.5 = 0.2857 to four places; a pass median of 2.123456 is kept as 2.1235 and a
    run of 1.23456 ms as 1.2346."""
    passes = [{"batch_size": 1, "seq_len": 8, "p50_ms": p, "samples_ms": [s]} for p, s in ((3.0, 1.23456),
                                                                                            (4.0, 2.0))]  # fmt: skip
    merged = latency._merge_passes(passes)
    assert merged["pass_spread"] == 0.2857 and merged["samples_ms"] == [1.2346, 2.0]
    odd = latency._merge_passes([{**passes[0], "p50_ms": 2.123456}, passes[1]])
    assert odd["pass_p50_ms"] == [2.1235, 4.0]


def test_fewer_repeats_than_passes_still_time_one_run_a_pass(monkeypatch, caplog):
    calls = []

    def fake_subprocess(model, cfg, data=None, qa=None):
        calls.append(cfg.repeats)
        lat = {"batch_size": 1, "seq_len": 8, "p50_ms": 1.0, "samples_ms": [1.0] * cfg.repeats}
        return {"model": model, "peak_rss_mb": 1.0, "pass": len(calls), "latency": [lat]}

    monkeypatch.setattr(latency, "benchmark_subprocess", fake_subprocess)
    seen = {}
    caplog.set_level("INFO", logger="edgeqa.bench.latency")
    results = latency.benchmark_interleaved({"a": ("A", False)}, LatencyConfig(repeats=2, rounds=3),
                                            done=lambda name, r: seen.update({name: r}))  # fmt: skip
    assert calls == [1, 1, 1] and results["a"]["latency"][0]["runs"] == 3
    assert results["a"]["pass"] == 1  # what is not a timing comes from the first pass
    assert seen == {"a": results["a"]}
    assert [r.getMessage() for r in caplog.records] == [f"timing a (pass {i}/3)" for i in (1, 2, 3)]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("avx2 fma", {"avx2": True, "avx512f": False, "avx512_vnni": False, "amx_int8": False}),
     ("avx512f avx512_vnni amx_int8", {"avx2": False, "avx512f": True, "avx512_vnni": True, "amx_int8": True})],
)  # fmt: skip
def test_the_machine_record_names_the_flags_that_decide_presets(monkeypatch, flags, expected):
    import os
    import platform

    from edgeqa.bench.cpu import this_cpu

    monkeypatch.setenv("EDGEQA_CPU_FLAGS", flags)
    this_cpu.cache_clear()
    try:
        cpu = this_cpu()
        assert latency.machine_info() == {"cpu": cpu.model, "logical_cores": os.cpu_count(), **expected,
                                          "isa": cpu.isa, "flags": cpu.to_dict()["flags"], "arch": cpu.arch,
                                          "python": platform.python_version()}  # fmt: skip
    finally:
        this_cpu.cache_clear()


def test_the_versions_recorded_are_those_installed():
    from importlib.metadata import version

    versions = latency.library_versions()
    assert {k: versions[k] for k in ("torch", "onnxruntime", "onnx", "transformers", "numpy")} == {
        k: version(k) for k in ("torch", "onnxruntime", "onnx", "transformers", "numpy")}  # fmt: skip
    assert set(versions) <= {"torch", "onnxruntime", "onnx", "transformers", "numpy", "optimum", "optimum-onnx"}


def test_peak_memory_is_read_from_vmhwm_and_else_from_rusage(monkeypatch):
    import io

    status = "Name:\tpython\nVmPeak:\t  9999 kB\nVmHWM:\t    3072 kB\n"
    monkeypatch.setattr(latency, "open", lambda path, encoding: io.StringIO(status) if (path, encoding) == (
        "/proc/self/status", "ascii") else pytest.fail(f"read {path}"), raising=False)  # fmt: skip
    assert latency.peak_rss_mb() == 3.0

    def unreadable(path, encoding):
        raise OSError("no /proc")

    monkeypatch.setattr(latency, "open", unreadable, raising=False)
    monkeypatch.setattr(latency.resource, "getrusage", lambda who: type("R", (), {"ru_maxrss": 5120})()
                        if who == latency.resource.RUSAGE_SELF else pytest.fail("another process"))  # fmt: skip
    assert latency.peak_rss_mb() == 5.0


def test_each_input_a_model_takes_is_filled(monkeypatch):
    """All three inputs when the model takes them: ids drawn by numpy's default_rng(0) from the top nine tenths of
    the vocabulary, [CLS] first, a mask of ones and segment 0 throughout."""
    engine = _Engine(["input_ids", "attention_mask", "token_type_ids"])
    latency.time_shape(engine, vocab_size=1000, cls_id=7, batch_size=2, seq_len=6, warmup=0, repeats=1)
    (inputs,) = engine.seen
    expected = np.random.default_rng(0).integers(100, 1000, size=(2, 6), dtype=np.int64)
    expected[:, 0] = 7
    assert inputs["input_ids"].tolist() == expected.tolist() and inputs["input_ids"].dtype == np.int64
    assert inputs["attention_mask"].tolist() == [[1] * 6] * 2 and inputs["token_type_ids"].tolist() == [[0] * 6] * 2


def test_a_subprocess_benchmark_reads_the_last_line_and_tells_a_failure(monkeypatch):
    import json
    import subprocess
    import sys

    ran = []

    def run(cmd, capture_output, text, cwd):
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout='loading\nwarming up\n{"model": "m"}\n', stderr="")

    monkeypatch.setattr(latency.subprocess, "run", run)
    cfg = LatencyConfig(repeats=3)
    assert latency.benchmark_subprocess("m", cfg) == {"model": "m"}
    assert ran == [[sys.executable, "-m", "edgeqa.bench.latency", "m", "--config", json.dumps(cfg.to_dict())]]
    # questions: a file by its absolute path (the process runs in another folder), a hub id as given, and windows
    qa = QAConfig(max_length=64, doc_stride=16)
    monkeypatch.chdir(Path(__file__).parent)
    for data, passed in (("conftest.py", str(Path(__file__).parent / "conftest.py")), ("squad", "squad")):
        latency.benchmark_subprocess("m", cfg, data=data, qa=qa)
        assert ran[-1][6:] == ["--data", passed, "--qa", json.dumps(qa.to_dict())]
    for code, stderr, last in ((1, "Traceback\nValueError: bad\n", "ValueError: bad"), (2, "", "no output")):
        monkeypatch.setattr(latency.subprocess, "run", lambda cmd, code=code, stderr=stderr, **kw:
                            subprocess.CompletedProcess(cmd, code, stdout="", stderr=stderr))  # fmt: skip
        with pytest.raises(EdgeQAError) as e:
            latency.benchmark_subprocess("m", cfg)
        assert str(e.value) == f"m: benchmark failed: {last}"


def test_the_benchmark_command_prints_one_json_line_or_one_error(monkeypatch, capsys):
    import json

    asked = []

    def fake_benchmark(model, cfg, data=None, qa=None):
        asked.append((model, cfg) if data is None else (model, cfg, data, qa))
        if model == "bad":
            raise EdgeQAError("bad: no such model file or folder")
        return {"model": model, "p50": 1.5}

    monkeypatch.setattr(latency, "benchmark", fake_benchmark)
    monkeypatch.setattr("sys.argv", ["latency", "m", "--config", '{"repeats": 3, "seq_lens": [64]}'])
    assert latency._main() == 0
    assert json.loads(capsys.readouterr().out) == {"model": "m", "p50": 1.5}
    assert asked == [("m", LatencyConfig(repeats=3, seq_lens=(64,)))]
    monkeypatch.setattr("sys.argv", ["latency", "bad"])
    assert latency._main() == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == "edgeqa: error: bad: no such model file or folder\n"
    assert asked[-1] == ("bad", LatencyConfig())
    monkeypatch.setattr(
        "sys.argv", ["latency", "m", "--data", "d.json", "--qa", '{"max_length": 64, "doc_stride": 16}']
    )
    assert latency._main() == 0
    assert asked[-1] == ("m", LatencyConfig(), "d.json", QAConfig(max_length=64, doc_stride=16))
