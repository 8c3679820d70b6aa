"""Graph fusion and the mobile format on a tiny 2-layer BERT (4 heads): which ops each fusion makes, what the
folders record, and what they refuse.

The expected op counts come from BERT's layout: per layer one self-attention, one GELU, and two residual adds each
followed by a LayerNormalization, plus one LayerNormalization after the embeddings. So 2 layers give 2 Attention,
2 BiasGelu (the GELU with its bias), 4 SkipLayerNormalization (a residual add with its LayerNormalization) and 5
LayerNormalizations before any fusion (2 x 2 + 1), and one EmbedLayerNormalization for the embeddings' sum and norm.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter

import onnx
import pytest

from edgeqa.bench.files import EdgeQAError
from edgeqa.export.mobile import convert_to_ort
from edgeqa.export.optimize import FUSIONS, fuse


def _ops(folder) -> Counter:
    return Counter(n.op_type for n in onnx.load(folder / "model.onnx").graph.node)


@pytest.mark.parametrize(
    "fusions, expected",
    [
        (FUSIONS, {"Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2, "EmbedLayerNormalization": 1}),
        (("attention",), {"Attention": 2, "LayerNormalization": 5}),
        (("gelu",), {"BiasGelu": 2, "LayerNormalization": 5}),
        (("skip_layer_norm",), {"SkipLayerNormalization": 4, "LayerNormalization": 1}),  # the embeddings' stays
        # onnxruntime fuses the embeddings only where it has fused the attention whose mask they feed
        (("attention", "embed_layer_norm"), {"Attention": 2, "EmbedLayerNormalization": 1, "LayerNormalization": 4}),
    ],
)
def test_each_fusion_makes_its_ops_and_the_folder_records_them(onnx_dir, tmp_path, fusions, expected):
    counts = fuse(onnx_dir, tmp_path / "fused", fusions=fusions)
    assert counts == expected
    saved = _ops(tmp_path / "fused")
    assert {op: saved[op] for op in expected} == expected  # what the saved graph holds, counted here
    record = json.loads((tmp_path / "fused" / "fusion.json").read_text())
    assert record == {"source": str(onnx_dir), "fusions": list(fusions), "fused_ops": expected}
    assert {"config.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "fused").iterdir()}


def test_fused_attention_keeps_the_models_heads(onnx_dir, tmp_path):
    fuse(onnx_dir, tmp_path / "fused", fusions=("attention",))
    nodes = [n for n in onnx.load(tmp_path / "fused" / "model.onnx").graph.node if n.op_type == "Attention"]
    heads = [a.i for n in nodes for a in n.attribute if a.name == "num_heads"]
    assert heads == [4, 4]  # conftest's tiny BERT: hidden 32 in 4 heads, read from the graph


def test_a_folder_without_config_is_fused_by_berts_rules_and_unknown_types_are_refused(onnx_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(onnx_dir, bare)
    (bare / "config.json").unlink()
    assert fuse(bare, tmp_path / "fused", fusions=("attention",))["Attention"] == 2
    config = json.loads((onnx_dir / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(EdgeQAError) as e:
        fuse(bare, tmp_path / "t5")
    assert str(e.value) == f"{bare}: no fusion rules for model type 't5'"
    with pytest.raises(EdgeQAError) as e:
        fuse(onnx_dir, tmp_path / "bad", fusions=("warp", "attention", "fold"))
    assert str(e.value) == f"unknown fusion(s) fold, warp; choose from {', '.join(FUSIONS)}"
    assert not (tmp_path / "t5").exists() and not (tmp_path / "bad").exists()


def test_the_mobile_format_is_made_from_onnx_only_and_a_broken_graph_leaves_nothing(onnx_dir, tmp_path):
    mobile = convert_to_ort(onnx_dir, tmp_path / "mobile")
    with pytest.raises(EdgeQAError) as e:
        convert_to_ort(mobile, tmp_path / "again")
    assert str(e.value) == f"{mobile}: the mobile format is made from an ONNX model; export it first"
    broken = tmp_path / "broken"
    shutil.copytree(onnx_dir, broken)
    graph = onnx.load(broken / "model.onnx")
    graph.graph.node[0].op_type = "NoSuchOp"  # a valid file whose graph ONNX Runtime cannot load
    onnx.save(graph, broken / "model.onnx")
    with pytest.raises(EdgeQAError) as e:
        convert_to_ort(broken, tmp_path / "out")
    assert str(e.value).startswith(f"{broken / 'model.onnx'}: conversion to the ORT format failed: ")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
