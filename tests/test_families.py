"""Every supported model family goes through export (with parity), fusion (with parity), int8 quantization of the
fused graph, latency and EM/F1."""

import pytest

from conftest import FAMILIES, make_tiny_qa_model
from edgeqa.bench.engines import load_qa_model
from edgeqa.bench.evaluate import evaluate
from edgeqa.bench.latency import LatencyConfig, benchmark
from edgeqa.bench.squad import load_squad
from edgeqa.export.onnx import export_onnx
from edgeqa.export.optimize import fuse
from edgeqa.export.quantize import QuantizeConfig, quantize


@pytest.mark.parametrize("family", FAMILIES)
def test_family_end_to_end(family, tmp_path, toy_squad):
    folder = make_tiny_qa_model(tmp_path / family, family=family)
    examples = load_squad(toy_squad).examples
    onnx_dir = export_onnx(folder, tmp_path / f"{family}-onnx", parity_examples=examples)
    names = set(load_qa_model(onnx_dir, 1).engine.input_names)
    if family == "distilbert":
        assert "token_type_ids" not in names  # DistilBERT has no segment embeddings
    fused = tmp_path / f"{family}-fused"
    counts = fuse(onnx_dir, fused, parity_examples=examples)  # refuses to write a fused model that answers otherwise
    if family == "mobilebert":  # its bottlenecks and NoNorm match no rule of onnxruntime's: an unfused copy
        assert counts == {}
    else:
        assert counts["Attention"] >= 1 and counts["SkipLayerNormalization"] >= 1, counts
    int8 = quantize(fused, tmp_path / f"{family}-int8", QuantizeConfig())
    for model in (folder, onnx_dir, fused, int8):
        metrics = evaluate(model, toy_squad, threads=1, progress=False)
        assert metrics["total"] == 3 and metrics["missing"] == 0
    result = benchmark(int8, LatencyConfig(seq_lens=(64,), warmup=1, repeats=3, threads=1))
    lat = result["latency"][0]
    assert lat["seq_len"] == 64 and 0 < lat["p50_ms"] <= lat["p99_ms"]
    assert result["file_bytes"] > 0


def test_roberta_offsets_map_back_to_text(tmp_path):
    """Byte-level BPE marks spaces inside tokens; answers must still be exact slices of the context."""
    from edgeqa.bench.qa import QAConfig, tokenize

    folder = make_tiny_qa_model(tmp_path / "roberta", family="roberta")
    tok = load_qa_model(folder, 1).tokenizer
    context = "paris is the capital of france."
    f = tokenize(tok, ["what is the capital?"], [context], QAConfig(max_length=64, doc_stride=16))
    spans = [(a, b) for a, b in f.offsets[0] if a >= 0]
    words = [context[a:b] for a, b in spans]
    assert "".join(words).replace(" ", "") == context.replace(" ", "")
    assert all(not w.startswith(" ") for w in words)
    assert tok.cls_token == "<s>" and f.cls_index[0] == 0
