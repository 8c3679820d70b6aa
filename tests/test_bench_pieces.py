"""Small pieces of bench/: the CPU read from ARM's cpuinfo layouts, the family registry, PyTorch's int8 baseline and
the torch-free tokenizer's fallback to transformers."""

from __future__ import annotations

import platform

import pytest
import torch

from conftest import make_tiny_qa_model
from edgeqa.bench import families, tokenizer
from edgeqa.bench.cpu import parse_cpuinfo
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.torch_int8 import quantize_linear_int8


@pytest.mark.parametrize("key", ["CPU model", "Hardware", "model name"])
def test_the_cpu_model_is_read_from_each_layouts_key(key):
    cpu = parse_cpuinfo(f"processor\t: 0\n{key}\t: Vendor: Part 7\nFeatures\t: fp asimd asimddp i8mm\n", "aarch64")
    assert cpu.model == "Vendor: Part 7"  # split at the first colon only
    assert cpu.isa == "arm64_i8mm"


def test_a_cpuinfo_without_a_model_falls_back_to_the_platforms_name():
    cpu = parse_cpuinfo("flags\t: fpu avx2\n", "x86_64")
    assert cpu.model == (platform.processor() or "x86_64") and cpu.isa == "avx2"


def test_family_features_are_read_from_the_registry(monkeypatch):
    assert families.has("bert", "bert_layout") and families.has("BertTokenizerFast", "wordpiece")
    assert not families.has("distilbert", "bert_layout") and not families.has("no-such-model", "wordpiece")
    monkeypatch.setattr(families, "FAMILIES", dict(families.FAMILIES))
    made = families.register_family(families.Family("toy_net", wordpiece=True))
    assert families.family("ToyNet") is made and families.has("toy-net", "wordpiece")
    assert "toy_net" in families.families_with("wordpiece") and not families.has("toy_net", "bert_layout")
    with pytest.raises(ValueError, match="model family 'ToyNet' is registered twice"):
        families.register_family(families.Family("ToyNet"))


def test_pytorchs_int8_baseline_quantizes_every_linear_layer_to_int8(tiny):
    quantized = quantize_linear_int8(tiny)
    linears = {n: m for n, m in quantized.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)}
    assert len(linears) == sum(isinstance(m, torch.nn.Linear) for m in tiny.modules()) == 13  # 6 per layer, QA head
    assert all(m.weight().dtype == torch.qint8 for m in linears.values())
    assert not any(type(m) is torch.nn.Linear for m in quantized.modules())


def test_a_tokenizer_without_tokenizer_json_or_vocab_is_converted_by_transformers(tmp_path, monkeypatch):
    folder = make_tiny_qa_model(tmp_path / "roberta", family="roberta")
    whole = tokenizer.load_qa_tokenizer(folder)
    (folder / "tokenizer.json").unlink()
    converted = tokenizer.load_qa_tokenizer(folder)
    question, context = "who lived in the city?", "the king lived in the city on the river."
    assert converted.backend.encode(question, context).ids == whole.backend.encode(question, context).ids
    assert (converted.cls_token, converted.pad_token, converted.type_ids) == ("<s>", "<pad>", False)

    def missing(_folder):
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")

    from edgeqa.bench import engines

    monkeypatch.setattr(engines, "load_tokenizer", missing)
    with pytest.raises(EdgeQAError) as e:
        tokenizer.load_qa_tokenizer(folder)
    assert str(e.value) == (
        f"{folder}: no tokenizer.json (nor a BERT vocab.txt); converting its tokenizer needs transformers, "
        "which `pip install 'edgeqa[full]'` installs"
    )


def test_a_slow_tokenizer_is_refused_and_a_fast_one_wrapped_with_its_settings(tmp_path):
    from transformers import AutoTokenizer, BertTokenizer

    folder = make_tiny_qa_model(tmp_path / "bert")
    with pytest.raises(EdgeQAError) as e:
        tokenizer.as_qa_tokenizer(BertTokenizer.from_pretrained(folder))
    assert str(e.value) == "QA needs a fast (Rust) tokenizer for character offsets; this model folder has a slow one"
    fast = AutoTokenizer.from_pretrained(folder)
    wrapped = tokenizer.as_qa_tokenizer(fast)
    assert wrapped.backend is fast.backend_tokenizer and tokenizer.as_qa_tokenizer(wrapped) is wrapped
    assert (wrapped.cls_token, wrapped.pad_token, wrapped.question_first, wrapped.type_ids) == ("[CLS]", "[PAD]",
                                                                                               True, True)  # fmt: skip
    assert len(wrapped) == len(fast)  # the vocabulary with its added tokens


def test_an_arm_cpus_record_lists_its_own_flags():
    cpu = parse_cpuinfo("Features\t: fp asimd asimddp i8mm sve\nCPU part\t: 0xd40\n", "arm64")
    assert cpu.to_dict()["flags"] == ["asimd", "asimddp", "i8mm", "sve"] and cpu.to_dict()["arch"] == "arm64"
    aarch = parse_cpuinfo("Features\t: fp asimd bf16\n", "aarch64")
    assert aarch.to_dict()["flags"] == ["asimd", "bf16"] and aarch.isa == "arm64" and aarch.native_bf16


def test_added_tokens_beyond_the_vocabulary_split_text_as_transformers_does(tmp_path):
    """tokenizer_config.json's added tokens (one special, one plain that strips the space before it) are whole
    tokens of their own in the pipeline built from vocab.txt alone, at the ids transformers gives them."""
    import json

    from transformers import AutoTokenizer

    folder = make_tiny_qa_model(tmp_path / "bert")
    (folder / "tokenizer.json").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    flags = {"normalized": False, "rstrip": False, "single_word": False}
    config["added_tokens_decoder"].update({
        "145": {"content": "[ANS]", "lstrip": False, "special": True, **flags},
        "144": {"content": "Qx", "lstrip": True, "special": False, **flags},
    })  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    question, context = "who [ANS] lived Qx in the city?", "the king [ANS] lived in the city Qx."
    want = AutoTokenizer.from_pretrained(folder)(question, context)["input_ids"]
    got = tokenizer.load_qa_tokenizer(folder)
    assert got.backend.encode(question, context).ids == want
    assert {144, 145} <= set(want) and len(got) == 146
    added = {t.content: t for t in got.backend.get_added_tokens_decoder().values()}
    assert added["[ANS]"].special and not added["Qx"].special and added["Qx"].lstrip
