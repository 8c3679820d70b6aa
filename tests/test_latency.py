"""Latency measurement: settings checks and interleaved passes merged into one set of percentiles."""

import pytest

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.latency import LatencyConfig, benchmark_interleaved, machine_info, peak_rss_mb


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

    cfg = LatencyConfig(batch_sizes=(1, 4), seq_lens=(128,), rounds=3, torch_int8=True)
    assert LatencyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(EdgeQAError, match="unknown bench setting"):
        LatencyConfig.from_dict({"turbo": True})


def test_settings_and_machine():
    with pytest.raises(EdgeQAError, match="positive"):
        LatencyConfig(repeats=0)
    with pytest.raises(EdgeQAError, match="positive"):
        LatencyConfig(seq_lens=())
    info = machine_info()
    assert info["logical_cores"] >= 1 and isinstance(info["avx512_vnni"], bool)
    assert peak_rss_mb() > 10
