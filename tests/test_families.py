"""Every supported model family goes through export (with parity), fusion (with parity), int8 quantization of the
fused graph, latency and EM/F1."""

import json
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from conftest import FAMILIES, make_tiny_qa_model
from edgeqa.bench.engines import load_qa_model
from edgeqa.bench.evaluate import evaluate
from edgeqa.bench.families import FAMILIES as REGISTERED
from edgeqa.bench.families import Family, families_with, register_family
from edgeqa.bench.families import family as registered
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.latency import LatencyConfig, benchmark
from edgeqa.bench.squad import load_squad
from edgeqa.bench.tokenizer import as_qa_tokenizer, load_qa_tokenizer
from edgeqa.export.onnx import export_onnx
from edgeqa.export.optimize import fuse
from edgeqa.export.quantize import QuantizeConfig, quantize


@pytest.mark.parametrize("family", FAMILIES)
def test_family_end_to_end(family, tmp_path, toy_squad):
    folder = make_tiny_qa_model(tmp_path / family, family=family)
    examples = load_squad(toy_squad).examples
    onnx_dir = export_onnx(folder, tmp_path / f"{family}-onnx", parity_examples=examples)
    onnx_model = load_qa_model(onnx_dir, 1)
    assert as_qa_tokenizer(onnx_model.tokenizer).type_ids == registered(family).type_ids  # read from the table
    if family == "distilbert":
        assert "token_type_ids" not in onnx_model.engine.input_names  # DistilBERT has no segment embeddings
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


def test_every_family_edgeqa_fuses_has_a_tiny_model_and_token_types_as_transformers_has_them(tmp_path):
    assert set(families_with("fusion")) <= set(FAMILIES)
    for name in FAMILIES:
        folder = make_tiny_qa_model(tmp_path / name, family=name)
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        settings.pop("model_input_names", None)  # as older tokenizer folders: the family alone tells
        (folder / "tokenizer_config.json").write_text(json.dumps(settings))
        expected = "token_type_ids" in AutoTokenizer.from_pretrained(folder).model_input_names  # transformers' class
        assert load_qa_tokenizer(folder).type_ids == expected, name


def test_a_family_is_found_by_every_spelling_of_its_name():
    for spelling in ("xlm-roberta", "xlm_roberta", "XLMRobertaTokenizerFast", "XLMRobertaTokenizer", "xlmroberta"):
        assert registered(spelling).model_type == "xlm-roberta", spelling
    assert registered("BertTokenizerFast").model_type == "bert" and registered("distilbert").model_type == "distilbert"
    assert registered("PreTrainedTokenizerFast") is None and registered("t5") is None
    with pytest.raises(ValueError, match="registered twice"):
        register_family(Family("XLM_Roberta"))
    assert list(REGISTERED)[:7] == ["bert", "distilbert", "electra", "mobilebert", "roberta", "xlm-roberta", "albert"]


def test_only_families_with_bert_layout_are_pruned_by_head_or_built_into_students(tmp_path):
    from transformers import AutoConfig

    from edgeqa.compress.prune_structured import check_structured
    from edgeqa.compress.student import StudentSpec, student_config

    roberta = AutoConfig.from_pretrained(make_tiny_qa_model(tmp_path / "r", family="roberta"))
    with pytest.raises(EdgeQAError, match="structured pruning knows bert models; this one is 'roberta'"):
        check_structured(SimpleNamespace(config=roberta))
    with pytest.raises(EdgeQAError, match="students are built from bert teachers; this teacher is 'roberta'"):
        student_config(StudentSpec(num_hidden_layers=1), roberta)
