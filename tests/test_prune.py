"""Pruning in process: magnitude masks and schedules, the refit and its mask choice, structured head and neuron
removal, and settings refused. End-to-end recovery runs are in test_prune_recipes.py."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_tiny_qa_model
from edgeqa.bench.engines import load_torch_qa_model
from edgeqa.bench.files import EdgeQAError
from edgeqa.compress.prune_magnitude import (
    apply_magnitude_masks,
    bake_masks,
    cubic_sparsity,
    input_rms,
    prunable_linears,
    sparsity_report,
)
from edgeqa.compress.prune_refit import OBS_BLOCK, refit_kept_weights
from edgeqa.compress.prune_structured import (
    ffn_scores_by_magnitude,
    gradient_scores,
    head_scores_by_magnitude,
    heads_to_remove,
    prune_ffn_,
    prune_heads_,
)


def _inputs(model, n=3, length=12):
    torch.manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (n, length))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def test_global_and_per_layer_magnitude_masks_hit_the_target(tiny):
    layers = prunable_linears(tiny)
    assert "qa_outputs" not in layers and all(".encoder.layer." in n for n in layers)
    apply_magnitude_masks(layers, 0.6, "layer")
    report = sparsity_report(tiny)
    assert all(abs(s - 0.6) < 0.01 for s in report["per_layer"].values())
    apply_magnitude_masks(layers, 0.8, "global")  # raising the target keeps what was pruned
    report = sparsity_report(tiny)
    assert abs(report["pruned_matrices_sparsity"] - 0.8) < 0.005
    assert len(set(report["per_layer"].values())) > 1  # one threshold: layers differ
    before = tiny(**_inputs(tiny)).start_logits
    bake_masks(tiny)
    assert not any(n.endswith("weight_orig") for n, _ in tiny.named_parameters())
    torch.testing.assert_close(tiny(**_inputs(tiny)).start_logits, before)
    assert abs(sparsity_report(tiny)["pruned_matrices_sparsity"] - 0.8) < 0.005


def test_input_weighted_choice_keeps_magnitudes_share_of_zeros_per_matrix(tiny):
    layers = prunable_linears(tiny)
    batch = _inputs(tiny)
    batch["attention_mask"][:, -4:] = 0  # padding must not count
    seen = {}
    handle = layers["bert.encoder.layer.1.intermediate.dense"].register_forward_pre_hook(
        lambda _m, args: seen.setdefault("x", args[0].detach())
    )
    rms = input_rms(tiny, layers, [batch])
    handle.remove()
    real = seen["x"][batch["attention_mask"].bool()]
    torch.testing.assert_close(rms["bert.encoder.layer.1.intermediate.dense"], real.pow(2).mean(0).sqrt())

    by_magnitude = copy.deepcopy(tiny)
    apply_magnitude_masks(prunable_linears(by_magnitude), 0.7, "global")
    apply_magnitude_masks(layers, 0.7, "global", rms)
    assert sparsity_report(tiny)["per_layer"] == sparsity_report(by_magnitude)["per_layer"]
    differ = 0
    for name, m in layers.items():
        score = (m.weight_orig * rms[name][None, :]).abs()
        kept, dropped = score[m.weight_mask.bool()], score[~m.weight_mask.bool()]
        assert kept.min() >= dropped.max()  # inside each matrix, the largest |w| x rms stay
        differ += int((m.weight_mask != prunable_linears(by_magnitude)[name].weight_mask).sum())
    assert differ > 0

    zeros = {name: ~m.weight_mask.bool() for name, m in layers.items()}
    dead = {name: r.clone().index_fill_(0, torch.arange(0, r.numel(), 2), 0.0) for name, r in rms.items()}
    apply_magnitude_masks(layers, 0.7, "global", dead)  # half the inputs dead: their weights score 0, as zeros do
    for name, m in layers.items():
        assert not m.weight_mask.bool()[zeros[name]].any()  # what was pruned stays pruned


def test_cubic_schedule_rises_fast_then_slowly_to_the_target():
    values = [cubic_sparsity(s, 100, 0.8, ramp=0.5) for s in range(0, 101, 10)]
    assert values[0] == 0.0 and values[5] == pytest.approx(0.8) and values[-1] == pytest.approx(0.8)
    steps = [b - a for a, b in zip(values, values[1:6], strict=False)]
    assert steps == sorted(steps, reverse=True)


def test_cubic_schedule_matches_zhu_and_gupta_by_hand():
    """s_t = s_f + (s_i - s_f) (1 - t / (n dt))^3 (Zhu and Gupta, 2017), target 0.8 reached at step 50 of 100:
    step 10: 0.8 - 0.8 * 0.8^3 = 0.3904; step 25: 0.8 - 0.8 * 0.5^3 = 0.7; step 40: 0.8 - 0.8 * 0.2^3 = 0.7936;
    from s_i = 0.5, step 25: 0.8 - 0.3 * 0.5^3 = 0.7625."""
    assert cubic_sparsity(10, 100, 0.8, ramp=0.5) == pytest.approx(0.3904)
    assert cubic_sparsity(25, 100, 0.8, ramp=0.5) == pytest.approx(0.7)
    assert cubic_sparsity(40, 100, 0.8, ramp=0.5) == pytest.approx(0.7936)
    assert cubic_sparsity(80, 100, 0.8, ramp=0.5) == pytest.approx(0.8)
    assert cubic_sparsity(25, 100, 0.8, ramp=0.5, initial=0.5) == pytest.approx(0.7625)


def test_cubic_schedule_can_start_with_a_large_first_step():
    values = [cubic_sparsity(s, 100, 0.8, ramp=0.5, initial=0.5) for s in range(0, 101, 10)]
    assert values[0] == 0.5 and values[5] == pytest.approx(0.8) and values == sorted(values)


def test_refit_solves_each_row_on_the_kept_inputs_and_brings_outputs_back(tiny):
    import copy

    calibration = [_inputs(tiny, n=4, length=16)]
    calibration[0]["attention_mask"][0, 10:] = 0  # padding: not part of what the refit matches
    held_out = _inputs(tiny, n=3, length=12)
    held_out["input_ids"] = held_out["input_ids"].flip(0)
    with torch.no_grad():
        dense = tiny(**held_out).start_logits
        x = tiny.bert.embeddings(calibration[0]["input_ids"], calibration[0]["token_type_ids"])
    x = x[calibration[0]["attention_mask"].bool()].double()  # what layer 0's query matrix reads
    query = tiny.bert.encoder.layer[0].attention.self.query.weight.detach().double().clone()

    plain = copy.deepcopy(tiny)
    apply_magnitude_masks(prunable_linears(plain), 0.6)
    layers = prunable_linears(tiny)
    apply_magnitude_masks(layers, 0.6)
    summary = refit_kept_weights(tiny, layers, calibration, target="matrix")
    assert summary["matrices"] == 12 and summary["output_error_after"] < summary["output_error_before"]
    for name, m in prunable_linears(plain).items():  # the magnitude mask stays: only the survivors move
        assert torch.equal(m.weight_mask, layers[name].weight_mask)

    # Row by row, the kept weights solve (H + d I)_SS w'_S = ((H + d I) w)_S with H = X^T X / n on real tokens.
    h = x.T @ x / len(x)
    h += 0.01 * h.diagonal().mean() * torch.eye(len(h), dtype=h.dtype)
    new = tiny.bert.encoder.layer[0].attention.self.query.weight.detach().double()
    keep = layers["bert.encoder.layer.0.attention.self.query"].weight_mask.bool()
    for r in range(0, len(new), 7):
        s = keep[r]
        torch.testing.assert_close(h[s][:, s] @ new[r, s], (h @ query[r])[s], rtol=1e-4, atol=1e-6)

    with torch.no_grad():
        off_plain = (plain(**held_out).start_logits - dense).pow(2).mean()
        off_refit = (tiny(**held_out).start_logits - dense).pow(2).mean()
    assert off_refit < 0.5 * off_plain  # on windows the refit never saw


def test_refit_to_the_model_matches_the_dense_models_inputs_and_outputs(tiny):
    import copy

    calibration = [_inputs(tiny, n=6, length=16)]
    calibration[0]["attention_mask"][0, 9:] = 0
    real = calibration[0]["attention_mask"].bool()
    dense = copy.deepcopy(tiny)
    by_matrix = copy.deepcopy(tiny)
    for model, target in ((tiny, "model"), (by_matrix, "matrix")):
        layers = prunable_linears(model)
        apply_magnitude_masks(layers, 0.6)
        summary = refit_kept_weights(model, layers, calibration, target=target)
        assert summary["target"] == target and summary["output_error_after"] < summary["output_error_before"]

    def layer_1_input(model):  # what layer 1's query matrix reads: layer 0's output, on real tokens
        with torch.no_grad():
            hidden = model(**calibration[0], output_hidden_states=True).hidden_states[1]
        return hidden[real].double()

    # Layer 1 reads what the pruned layer 0 feeds it (x), and is fitted to what the dense model computed (d).
    x, d = layer_1_input(tiny), layer_1_input(dense)
    h = x.T @ x / len(x)
    damping = 0.01 * h.diagonal().mean()
    h += damping * torch.eye(len(h), dtype=h.dtype)
    query = "bert.encoder.layer.1.attention.self.query"
    w = dict(dense.named_modules())[query].weight.detach().double()
    module = dict(tiny.named_modules())[query]
    new, keep = module.weight.detach().double(), module.weight_mask.bool()
    for r in range(0, len(new), 5):
        s = keep[r]
        torch.testing.assert_close(
            h[s][:, s] @ new[r, s], (x.T @ (d @ w[r]) / len(x) + damping * w[r])[s], rtol=1e-4, atol=1e-6
        )

    with torch.no_grad():  # the whole model lands nearer the dense one when each fit also undoes earlier errors
        want = dense(**calibration[0])
        miss = {
            target: sum(
                (getattr(m(**calibration[0]), k) - getattr(want, k))[real].pow(2).mean()
                for k in ("start_logits", "end_logits")
            )
            for m, target in ((tiny, "model"), (by_matrix, "matrix"))
        }
    assert miss["model"] < miss["matrix"]


def test_obs_choice_keeps_each_matrixs_share_of_zeros_and_fits_better_than_magnitudes(tiny):
    calibration = [_inputs(tiny, n=8, length=16)]
    query = tiny.bert.encoder.layer[0].attention.self.query
    with torch.no_grad():  # inputs of unequal sizes, as in trained models: magnitude alone is blind to them
        for norm in [tiny.bert.embeddings.LayerNorm] + [layer.output.LayerNorm for layer in tiny.bert.encoder.layer]:
            norm.weight.copy_(torch.linspace(0.1, 3.0, len(norm.weight))[torch.randperm(len(norm.weight))])
        query.weight[:, :3] = 0  # gone before: stay gone, whatever their inputs
    by_magnitude = copy.deepcopy(tiny)
    results = {}
    for model, choose in ((by_magnitude, False), (tiny, True)):
        layers = prunable_linears(model)
        apply_magnitude_masks(layers, 0.7)
        masks = {name: m.weight_mask.clone() for name, m in layers.items()}
        results[choose] = refit_kept_weights(model, layers, calibration, target="model", choose=choose)
    chosen = prunable_linears(tiny)
    for name, m in chosen.items():
        assert torch.equal(m.weight_mask.sum(), masks[name].sum())  # each matrix keeps magnitude's count
        for lo in range(0, m.in_features, OBS_BLOCK):  # ... in every block of input columns
            assert m.weight_mask[:, lo : lo + OBS_BLOCK].sum() == masks[name][:, lo : lo + OBS_BLOCK].sum()
    assert not chosen["bert.encoder.layer.0.attention.self.query"].weight_mask[:, :3].any()
    changed = sum(int((m.weight_mask != masks[n]).sum()) for n, m in chosen.items())
    assert changed > 0.1 * sum(int(m.weight_mask.numel()) for m in chosen.values())
    assert results[True]["output_error_after"] < 0.8 * results[False]["output_error_after"]


def test_structured_pruning_shrinks_matrices_and_reloads(tiny, tmp_path):
    from transformers import AutoModelForQuestionAnswering

    plan = heads_to_remove(head_scores_by_magnitude(tiny), 0.25)
    assert sum(len(h) for h in plan.values()) == 2
    prune_heads_(tiny, plan)
    width = prune_ffn_(tiny, 0.5)
    assert width == 64 and tiny.bert.encoder.layer[0].intermediate.dense.weight.shape == (64, 32)
    removed = {layer: len(h) for layer, h in plan.items()}
    for i, layer in enumerate(tiny.bert.encoder.layer):
        assert layer.attention.self.query.weight.shape[0] == 8 * (4 - removed.get(i, 0))
    out = tiny(**_inputs(tiny)).start_logits
    tiny.save_pretrained(tmp_path / "pruned")
    again = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "pruned").eval()
    torch.testing.assert_close(again(**_inputs(again)).start_logits, out)


def test_gradient_importance_ranks_heads_and_neurons(tiny):
    def loss(model, batch):
        out = model(**batch)
        return out.start_logits.logsumexp(-1).sum() + out.end_logits.logsumexp(-1).sum()

    heads, ffn = gradient_scores(tiny, [_inputs(tiny)], loss)
    assert heads.shape == (2, 4) and ffn.shape == (2, 128)
    assert (heads > 0).all() and ffn.sum() > 0
    assert all(p.grad is None for p in tiny.parameters())

    # Magnitudes are taken per batch: two batches pulling a gate in opposite directions add up, never cancel.
    def signed(model, batch):
        return batch["sign"] * loss(model, {k: v for k, v in batch.items() if k != "sign"})

    both = gradient_scores(tiny, [{**_inputs(tiny), "sign": 1.0}, {**_inputs(tiny), "sign": -1.0}], signed)
    torch.testing.assert_close(both[0], 2 * heads)
    torch.testing.assert_close(both[1], 2 * ffn)


def test_removing_every_head_of_a_layer_is_refused(tiny):
    scores = head_scores_by_magnitude(tiny)
    scores[1] = -1.0  # layer 1's heads are the weakest: 50% of all heads would empty it
    with pytest.raises(EdgeQAError, match="every head of layer 1"):
        heads_to_remove(scores, 0.5)
    with pytest.raises(EdgeQAError, match="all 4 heads of layer 0"):
        prune_heads_(tiny, {0: [0, 1, 2, 3]})


def test_structured_pruning_refuses_an_unknown_model_type(tmp_path):
    model = load_torch_qa_model(make_tiny_qa_model(tmp_path / "d", family="distilbert"))
    with pytest.raises(EdgeQAError, match="knows bert models; this one is 'distilbert'"):
        ffn_scores_by_magnitude(model)


def test_the_schedule_by_default_reaches_its_target_at_70_percent_of_the_steps():
    # ramp 0.7 of 100 steps: step 35 is half way, 0.8 - 0.8 * 0.5^3 = 0.7; at step 70 the target itself.
    assert cubic_sparsity(35, 100, 0.8) == pytest.approx(0.7)
    assert cubic_sparsity(70, 100, 0.8) == pytest.approx(0.8)
    assert cubic_sparsity(0, 100, 0.8) == 0.0  # from no sparsity by default


def test_the_sparsity_report_counts_zeros_per_matrix_and_overall(tiny):
    with torch.no_grad():
        for p in tiny.parameters():
            p.add_(1.0 - p.min())  # no zeros anywhere to start with: every weight at least 1
        tiny.bert.encoder.layer[0].attention.self.query.weight[0, 0] = 0.0  # 1 of 32 x 32
    report = sparsity_report(tiny)
    params = sum(p.numel() for p in tiny.parameters())
    assert report["per_layer"]["bert.encoder.layer.0.attention.self.query"] == 0.001  # 1 / 1024 = 0.000977
    assert report["per_layer"]["bert.encoder.layer.1.attention.self.query"] == 0.0
    total = sum(m.weight.numel() for m in prunable_linears(tiny).values())
    assert report["pruned_matrices_sparsity"] == round(1 / total, 4) and report["parameters"] == params
    assert report["nonzero_parameters"] == params - 1 and report["model_sparsity"] == round(1 / params, 4) == 0.0
    assert len(report["per_layer"]) == len(prunable_linears(tiny))
    only_ffn = sparsity_report(tiny, exclude=("*attention*",))
    assert only_ffn["pruned_matrices_sparsity"] == 0.0 and not any("attention" in n for n in only_ffn["per_layer"])


def test_input_rms_is_over_every_real_token_of_every_batch(tiny):
    layers = prunable_linears(tiny)
    a, b = _inputs(tiny, n=2, length=8), _inputs(tiny, n=3, length=8)
    b["input_ids"] = b["input_ids"].flip(0)
    both = {k: torch.cat([a[k], b[k]]) for k in a}
    split = input_rms(tiny, layers, [a, b])
    whole = input_rms(tiny, layers, [both])
    for name in layers:
        torch.testing.assert_close(split[name], whole[name])  # two batches count as one of all their tokens
