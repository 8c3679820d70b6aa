"""Which heads, neurons and weights pruning keeps, by hand-set weights and scores: the most important ones, exactly
the target's count at the threshold, the edges (no weight, one weight, one neuron left), the input RMS sums and the
messages (the rest of pruning in process: test_prune.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest import make_tiny_qa_model
from edgeqa.bench.engines import load_torch_qa_model
from edgeqa.bench.files import EdgeQAError
from edgeqa.compress.prune_magnitude import (
    apply_magnitude_masks,
    input_rms,
    prunable_linears,
    sparsity_report,
)
from edgeqa.compress.prune_refit import real_tokens
from edgeqa.compress.prune_structured import (
    ffn_scores_by_magnitude,
    head_scores_by_magnitude,
    heads_to_remove,
    prune_ffn_,
    prune_heads_,
)


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


SMALL = "bert.encoder.layer.0.attention.self.query"  # 32 x 32 weights, magnitudes 1/1024 .. 1024/1024
LARGE = "bert.encoder.layer.1.attention.self.query"  # 32 x 32 weights, magnitudes 1025/1024 .. 2048/1024


def _two_layers(model) -> dict[str, torch.nn.Linear]:
    """Two 32 x 32 matrices of distinct magnitudes, every one of the small matrix below every one of the large."""
    layers = prunable_linears(model, include=(SMALL, LARGE))
    signs = torch.tensor([1.0, -1.0]).repeat(512).view(32, 32)
    with torch.no_grad():
        layers[SMALL].weight.copy_(torch.arange(1, 1025.0).view(32, 32) / 1024 * signs)
        layers[LARGE].weight.copy_(torch.arange(1025, 2049.0).view(32, 32) / 1024 * signs)
    return layers


def _weight(m: torch.nn.Linear) -> torch.Tensor:
    """The masked weight now: `m.weight` itself is recomputed only at the next forward pass."""
    return m.weight_orig * m.weight_mask


def _zeros(layers) -> dict[str, int]:
    return {name: int((_weight(m) == 0).sum()) for name, m in layers.items()}


def test_exactly_the_target_share_goes_globally_by_default_and_per_layer_on_request(tiny, tmp_path):
    layers = _two_layers(tiny)
    apply_magnitude_masks(layers, 0.5)  # the default scope: one threshold, k = 1024 = every weight of SMALL
    assert _zeros(layers) == {SMALL: 1024, LARGE: 0}
    other = _two_layers(load_torch_qa_model(make_tiny_qa_model(tmp_path / "o", layers=2, hidden=32, heads=4)))
    apply_magnitude_masks(other, 0.25, "layer")  # k = 256 per matrix: the 256 smallest of each, no tie
    assert _zeros(other) == {SMALL: 256, LARGE: 256}
    assert torch.equal(_weight(other[LARGE]) == 0, torch.arange(1024).view(32, 32) < 256)


def test_one_weight_goes_when_the_target_is_one_weight(tiny):
    layers = _two_layers(tiny)
    apply_magnitude_masks(layers, 1 / 2048, "global")  # k = 1: the smallest of both, SMALL[0, 0]
    assert _zeros(layers) == {SMALL: 1, LARGE: 0} and _weight(layers[SMALL])[0, 0] == 0
    apply_magnitude_masks(layers, 1 / 1024, "layer")  # k = 1 per matrix: LARGE loses its smallest too
    assert _zeros(layers) == {SMALL: 1, LARGE: 1} and _weight(layers[LARGE])[0, 0] == 0


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_a_zero_target_prunes_nothing_even_below_magnitude_one(tiny, scope):
    layers = _two_layers(tiny)  # SMALL holds magnitudes 1/1024 .. 1: a threshold of 1 would empty it
    apply_magnitude_masks(layers, 0.0, scope)
    assert _zeros(layers) == {SMALL: 0, LARGE: 0}


def test_input_weighted_masks_keep_the_chosen_weights_unchanged_and_float32(tiny):
    layers = _two_layers(tiny)
    before = {name: m.weight.detach().clone() for name, m in layers.items()}
    rms = {name: torch.ones(32, dtype=torch.float64) for name in layers}  # float64, as a caller may hold it
    rms[SMALL][0] = 4096.0  # input feature 0 of SMALL matters most: its column stays whole
    apply_magnitude_masks(layers, 0.25, "layer", input_rms=rms)
    w = _weight(layers[SMALL])
    assert layers[SMALL].weight.dtype == torch.float32 and layers[SMALL].weight_mask.dtype == torch.float32
    assert (w[:, 0] != 0).all() and _zeros(layers) == {SMALL: 256, LARGE: 256}
    for name, m in layers.items():  # each weight is either kept as it was or zero, never scaled
        kept = _weight(m) != 0
        assert torch.equal(_weight(m)[kept], before[name][kept])


class _Probe(torch.nn.Module):
    """A model of one linear layer fed `inputs_embeds` as is: its inputs are exactly the test's numbers."""

    def __init__(self, width: int):
        super().__init__()
        self.lin = torch.nn.Linear(width, 1)

    def forward(self, inputs_embeds, attention_mask):
        return self.lin(inputs_embeds)


def test_input_rms_of_a_single_token_is_its_magnitude():
    probe = _Probe(2)
    batch = {"inputs_embeds": torch.tensor([[[3.0, -4.0]]]), "attention_mask": torch.ones(1, 1)}
    rms = input_rms(probe, {"lin": probe.lin}, [batch])
    torch.testing.assert_close(rms["lin"], torch.tensor([3.0, 4.0]))


def test_input_rms_keeps_small_batches_beside_a_large_one():
    # 4096^2 = 2^24, then 99 tokens of 1: a float32 sum stays 2^24 (2^24 + 1 rounds to 2^24), float64 gets 2^24 + 99.
    probe = _Probe(1)
    big = {"inputs_embeds": torch.tensor([[[4096.0]]]), "attention_mask": torch.ones(1, 1)}
    one = {"inputs_embeds": torch.tensor([[[1.0]]]), "attention_mask": torch.ones(1, 1)}
    rms = input_rms(probe, {"lin": probe.lin}, [big] + [one] * 99)
    torch.testing.assert_close(rms["lin"], torch.tensor([math.sqrt((2**24 + 99) / 100)]), rtol=1e-7, atol=0.0)


def test_inputs_not_shaped_like_the_mask_count_every_row():
    x = torch.arange(24.0).view(2, 3, 4)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    assert torch.equal(real_tokens(x, mask), torch.tensor([[0.0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19],
                                                           [20, 21, 22, 23]]))  # fmt: skip
    rows = torch.arange(24.0).view(6, 4)  # the 6 rows of 4 features, in order
    assert torch.equal(real_tokens(x, mask.T), rows)  # 3-D, but (2, 3) is not the mask's (3, 2)
    assert torch.equal(real_tokens(rows, mask), rows)  # 2-D input: already one row per token


def test_no_matching_layer_names_the_patterns(tiny):
    with pytest.raises(EdgeQAError, match=r"no nn.Linear layer matches include \['\*nothing\*'\] minus exclude \[\]"):
        prunable_linears(tiny, include=("*nothing*",))
    with pytest.raises(EdgeQAError, match=r"include \['\*query'\] minus exclude \['\*layer\.\?\.\*'\]"):
        prunable_linears(tiny, include=("*query",), exclude=("*layer.?.*",))


def test_the_sparsity_report_of_one_empty_matrix(tiny):
    with torch.no_grad():
        tiny.bert.encoder.layer[0].attention.self.query.weight.zero_()  # 1024 zeros
    params = sum(p.numel() for p in tiny.parameters())
    report = sparsity_report(tiny, include=(SMALL,))
    assert report["pruned_matrices_sparsity"] == 1.0 and report["per_layer"] == {SMALL: 1.0}
    assert report["model_sparsity"] == round(1024 / params, 4) and 0 < report["model_sparsity"] < 1


def test_head_scores_square_every_weight_of_every_slice(tiny):
    attn = tiny.bert.encoder.layer[0].attention
    with torch.no_grad():
        for p in (attn.self.query.weight, attn.self.key.weight, attn.self.value.weight, attn.output.dense.weight):
            p.zero_()
        attn.self.query.weight[8:16, 0] = 2.0  # head 1: 8 x 4 = 32
        attn.self.key.weight[8:16, 1] = -1.0  # head 1: 8 x 1 = 8 (a cube would subtract)
        attn.output.dense.weight[3, 16:24] = 3.0  # head 2's output columns: 8 x 9 = 72
    torch.testing.assert_close(head_scores_by_magnitude(tiny)[0], torch.tensor([0.0, 40.0, 72.0, 0.0]).sqrt())


def test_ffn_pruning_may_keep_a_single_neuron(tiny):
    scores = torch.zeros(2, 128)
    scores[0, 17], scores[1, 90] = 5.0, 7.0
    w0, w1 = (tiny.bert.encoder.layer[i].intermediate.dense.weight.detach().clone() for i in (0, 1))
    assert prune_ffn_(tiny, 1 - 1 / 128, scores) == 1  # 128 - round(127) = 1 neuron per layer
    assert torch.equal(tiny.bert.encoder.layer[0].intermediate.dense.weight, w0[[17]])
    assert torch.equal(tiny.bert.encoder.layer[1].intermediate.dense.weight, w1[[90]])


def test_select_input_through_prune_now_keeps_the_largest_weight_times_input_rms(tmp_path, toy_squad):
    """prune_now with `select: input` masks each matrix by |w_ij| x RMS(x_j), measured on the training windows it
    is given: the same masks as ranking by hand with the same inputs, and not those of magnitude alone."""
    from edgeqa.bench.engines import load_tokenizer
    from edgeqa.bench.qa import QAConfig
    from edgeqa.compress.prune import MagnitudeConfig, prune_now
    from edgeqa.compress.prune_data import input_batches
    from edgeqa.compress.trainset import load_trainset

    folder = make_tiny_qa_model(tmp_path / "m", layers=2, hidden=32, heads=4, dropout=0.0)
    model = load_torch_qa_model(folder).eval()
    trainset = load_trainset(toy_squad, None, load_tokenizer(folder), QAConfig(max_length=64, doc_stride=16))
    by_hand, plain = copy.deepcopy(model), copy.deepcopy(model)
    cfg = MagnitudeConfig(sparsity=0.5, scope="layer", select="input", refit_batches=1)
    prune_now(model, cfg, trainset)
    layers = prunable_linears(by_hand)
    apply_magnitude_masks(layers, 0.5, "layer", input_rms(by_hand, layers, input_batches(trainset, 1, seed=0)))
    apply_magnitude_masks(prunable_linears(plain), 0.5, "layer")
    chosen = {n: m.weight_mask for n, m in prunable_linears(model).items()}
    assert all(torch.equal(chosen[n], m.weight_mask) for n, m in layers.items())
    assert any(not torch.equal(chosen[n], m.weight_mask) for n, m in prunable_linears(plain).items())
    with pytest.raises(EdgeQAError, match="select: input measures the layers' inputs on training windows"):
        prune_now(load_torch_qa_model(folder), cfg)
