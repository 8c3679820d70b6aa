"""Which heads and FFN neurons structured pruning keeps: the most important ones, by hand-set weights and scores
(the rest of pruning in process: test_prune.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_tiny_qa_model
from edgeqa.bench.engines import load_torch_qa_model
from edgeqa.bench.files import EdgeQAError
from edgeqa.compress.prune_structured import (
    ffn_scores_by_magnitude,
    head_scores_by_magnitude,
    heads_to_remove,
    prune_ffn_,
    prune_heads_,
)


@pytest.fixture
def tiny(tmp_path):
    return load_torch_qa_model(make_tiny_qa_model(tmp_path / "m", layers=2, hidden=32, heads=4, dropout=0.0))


def test_the_lowest_scoring_heads_go_ranked_over_all_layers():
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.3], [0.2, 0.8, 0.05, 0.7]])
    assert heads_to_remove(scores, 0.25) == {0: [1], 1: [2]}  # 2 of 8: 0.05 and 0.1
    assert heads_to_remove(scores, 0.5) == {0: [1, 3], 1: [0, 2]}  # 4 of 8: 0.05, 0.1, 0.2, 0.3, sorted per layer
    assert heads_to_remove(scores, 0.07) == {1: [2]}  # round(0.56) = 1 head
    assert heads_to_remove(scores, 0.06) == {}  # round(0.48) = 0 heads
    assert heads_to_remove(scores, 0.0) == {}
    assert list(heads_to_remove(torch.tensor([[0.3, 0.8], [0.1, 0.7], [0.2, 0.95]]), 0.5)) == [0, 1, 2]  # layer order


def test_a_layer_may_keep_a_single_head(tiny):
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.9], [0.5, 0.6, 0.7, 0.8]])
    assert heads_to_remove(scores, 0.375) == {0: [0, 1, 2]}  # 3 of layer 0's 4 heads: allowed
    prune_heads_(tiny, {0: [0, 1, 2]})
    assert tiny.bert.encoder.layer[0].attention.self.num_attention_heads == 1


def test_head_and_neuron_scores_are_the_norms_of_their_slices(tiny):
    layer = tiny.bert.encoder.layer[1]
    attn = layer.attention
    with torch.no_grad():
        for p in (attn.self.query.weight, attn.self.key.weight, attn.self.value.weight, attn.output.dense.weight,
                  layer.intermediate.dense.weight, layer.output.dense.weight):  # fmt: skip
            p.zero_()
        attn.self.query.weight[8:16, 0] = 1.0  # head 1 (rows 8..15): 8 x 1
        attn.self.key.weight[8:16, 1] = 1.0  # head 1: another 8
        attn.self.value.weight[0:8, 0] = 0.5  # head 0: 8 x 0.25
        attn.output.dense.weight[3, 16:24] = 2.0  # head 2's columns of the output projection: 8 x 4
        layer.intermediate.dense.weight[5, :] = 1.0  # neuron 5's input row: 32 x 1
        layer.output.dense.weight[:, 7] = 2.0  # neuron 7's output column: 32 x 4
        layer.intermediate.dense.weight[7, 0] = 3.0  # and its input row: 9
    heads = head_scores_by_magnitude(tiny)
    assert heads.shape == (2, 4)
    torch.testing.assert_close(heads[1], torch.tensor([2.0, 16.0, 32.0, 0.0]).sqrt())
    ffn = ffn_scores_by_magnitude(tiny)
    assert ffn.shape == (2, 128)
    expected = torch.zeros(128)
    expected[5], expected[7] = 32.0**0.5, 137.0**0.5
    torch.testing.assert_close(ffn[1], expected)


def test_the_highest_scoring_neurons_and_heads_are_the_ones_kept(tiny):
    before = copy.deepcopy(tiny)
    scores = torch.stack([torch.arange(128.0).flip(0), (torch.arange(128) * 37 % 128).float()])  # distinct per layer
    assert prune_ffn_(tiny, 0.75, scores) == 32 and tiny.config.intermediate_size == 32
    for i, (new, old) in enumerate(zip(tiny.bert.encoder.layer, before.bert.encoder.layer, strict=True)):
        kept = sorted(range(128), key=lambda j: -scores[i, j])[:32]  # the 32 highest, by hand
        kept.sort()  # in their original order
        assert torch.equal(new.intermediate.dense.weight, old.intermediate.dense.weight[kept])
        assert torch.equal(new.intermediate.dense.bias, old.intermediate.dense.bias[kept])
        assert torch.equal(new.output.dense.weight, old.output.dense.weight[:, kept])
    assert kept != list(range(32))  # layer 1 keeps neurons spread over the whole width
    prune_heads_(tiny, {0: [1, 3]})
    q = tiny.bert.encoder.layer[0].attention.self.query.weight
    old_q = before.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(q, torch.cat([old_q[0:8], old_q[16:24]]))  # heads 0 and 2 stay
    with pytest.raises(EdgeQAError, match="pruning 100% of 32 feed-forward neurons leaves none"):
        prune_ffn_(tiny, 0.999)


def test_ffn_pruning_by_magnitude_keeps_the_largest_neurons(tiny):
    layer = tiny.bert.encoder.layer[0]
    with torch.no_grad():
        layer.intermediate.dense.weight[[10, 20, 30]] *= 100.0  # three neurons far larger than the rest
    big = layer.intermediate.dense.weight[[10, 20, 30]].clone()
    assert prune_ffn_(tiny, 1 - 3 / 128) == 3  # keep 3 of 128
    assert torch.equal(tiny.bert.encoder.layer[0].intermediate.dense.weight, big)
