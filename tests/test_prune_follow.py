"""Pruning methods as recovery carries them and as the pipeline applies them, against masks made by hand: a cubic
schedule's steps with its initial share, scope and exclusions, the windows each measurement and refit reads, the
hooks that hold the training windows, gradient importance, and refusals word for word."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeqa.bench.files import EdgeQAError
from edgeqa.compress import prune_magnitude
from edgeqa.compress.prune import describe_pruning, prune_now
from edgeqa.compress.prune_config import FLAT_V2
from edgeqa.compress.prune_data import input_batches, label_batches
from edgeqa.compress.prune_magnitude import MagnitudeConfig, apply_magnitude_masks, input_rms, prunable_linears
from edgeqa.compress.prune_structured import (
    StructuredConfig,
    gradient_scores,
    heads_to_remove,
    prune_ffn_,
    prune_heads_,
    span_loss,
)
from edgeqa.compress.train_config import DistillConfig


def _zeros(m) -> float:
    return float((m.weight_mask == 0).float().mean())


def _same_masks(a, b) -> bool:
    masks = [{n: m.weight_mask for n, m in prunable_linears(x).items() if hasattr(m, "weight_mask")} for x in (a, b)]
    return masks[0].keys() == masks[1].keys() and all(torch.equal(m, masks[1][n]) for n, m in masks[0].items())


def _sparsity(model) -> float:
    return prune_magnitude.sparsity_report(model)["pruned_matrices_sparsity"]


def _same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in
                                    zip(a, b, strict=True))  # fmt: skip


def test_a_cubic_schedule_starts_at_its_initial_share_and_rises_per_matrix(tiny, trainset):
    cfg = MagnitudeConfig(sparsity=0.6, schedule="cubic", ramp=0.5, update_every=2, initial=0.3, scope="layer",
                          exclude=("*output.dense",))  # fmt: skip
    cfg.apply(tiny, trainset, gradual=True)
    layers = prunable_linears(tiny)
    masked = {n: m for n, m in layers.items() if hasattr(m, "weight_mask")}
    assert sorted(set(layers) - set(masked)) == [f"bert.encoder.layer.{i}.{m}" for i in (0, 1)
                                                  for m in ("attention.output.dense", "output.dense")]  # fmt: skip
    assert all(abs(_zeros(m) - 0.3) < 2e-3 for m in masked.values())
    cfg.follow(tiny, trainset, 1, 8)  # not an update step: nothing moves
    assert all(abs(_zeros(m) - 0.3) < 2e-3 for m in masked.values())
    cfg.follow(tiny, trainset, 2, 8)
    # Zhu and Gupta: s = s_f + (s_i - s_f)(1 - t / (ramp T))^3 = 0.6 - 0.3 x (1 - 2/4)^3 = 0.5625, in every matrix
    assert all(_zeros(m) == 0.5625 for m in masked.values())
    assert not any(hasattr(m, "weight_mask") for n, m in layers.items() if n not in masked)  # still excluded


def test_a_global_scope_sets_one_threshold_for_every_matrix(tiny, trainset):
    """One threshold over all matrices: each keeps its own share, as masks made by hand over all of them."""
    by_hand = copy.deepcopy(tiny)
    cfg = MagnitudeConfig(sparsity=0.6, schedule="cubic", ramp=0.5, update_every=2, initial=0.3)
    cfg.apply(tiny, trainset, gradual=True)
    apply_magnitude_masks(prunable_linears(by_hand), 0.3, "global")
    assert _same_masks(tiny, by_hand)
    cfg.follow(tiny, trainset, 2, 8)
    apply_magnitude_masks(prunable_linears(by_hand), 0.5625, "global")
    assert _same_masks(tiny, by_hand)
    assert len({round(_zeros(m), 3) for m in prunable_linears(tiny).values()}) > 1  # not one share per matrix


def test_a_cubic_refit_reads_the_windows_of_its_step_and_the_method_chosen(tiny, trainset, monkeypatch):
    calls = []
    monkeypatch.setattr(prune_magnitude, "refit_kept_weights", lambda *a, **k: calls.append((a, k)))
    for select in ("obs", "magnitude"):
        cfg = MagnitudeConfig(sparsity=0.5, schedule="cubic", ramp=0.5, update_every=2, refit=True,
                              refit_batches=1, refit_to="matrix", select=select)  # fmt: skip
        cfg.apply(tiny, trainset, gradual=True)
        cfg.follow(tiny, trainset, 2, 8)  # 0 -> 0.4375: a rise worth a refit
    for (args, kwargs), choose in zip(calls, (True, False), strict=True):
        model, layers, batches, target = args
        assert model is tiny and sorted(layers) == sorted(prunable_linears(tiny)) and target == "matrix"
        assert _same_batches(batches, input_batches(trainset, 1, seed=2)) and kwargs == {"choose": choose}
    assert not _same_batches(input_batches(trainset, 1, seed=2), input_batches(trainset, 1, seed=0))


def test_input_weighted_steps_measure_the_windows_of_their_step(tiny, trainset):
    by_hand = copy.deepcopy(tiny)
    cfg = MagnitudeConfig(sparsity=0.5, schedule="cubic", ramp=0.5, update_every=2, select="input", refit_batches=1,
                          scope="layer")  # fmt: skip
    cfg.apply(tiny, trainset, gradual=True)
    cfg.follow(tiny, trainset, 2, 8)
    layers = prunable_linears(by_hand)
    apply_magnitude_masks(layers, 0.4375, "layer", input_rms(by_hand, layers, input_batches(trainset, 1, seed=2)))
    assert _same_masks(tiny, by_hand)


def test_one_shot_input_weighting_reads_the_windows_of_seed_0(tiny, trainset):
    by_hand = copy.deepcopy(tiny)
    cfg = MagnitudeConfig(sparsity=0.5, select="input", refit_batches=1, scope="layer", exclude=("*intermediate*",))
    prune_now(tiny, cfg, trainset)
    layers = prunable_linears(by_hand, exclude=("*intermediate*",))
    apply_magnitude_masks(layers, 0.5, "layer", input_rms(by_hand, layers, input_batches(trainset, 1, seed=0)))
    assert _same_masks(tiny, by_hand) and not hasattr(tiny.bert.encoder.layer[0].intermediate.dense, "weight_mask")


def test_a_one_shot_refit_reads_the_windows_of_seed_0(tiny, trainset, monkeypatch):
    calls = []
    monkeypatch.setattr(prune_magnitude, "refit_kept_weights", lambda *a, **k: calls.append((a, k)) or {"r": 1})
    cfg = MagnitudeConfig(sparsity=0.5, refit=True, refit_batches=1, refit_to="matrix")
    assert prune_now(tiny, cfg, trainset)["refit"] == {"r": 1}
    (model, layers, batches, target), kwargs = calls[0]
    assert model is tiny and sorted(layers) == sorted(prunable_linears(tiny)) and target == "matrix"
    assert _same_batches(batches, input_batches(trainset, 1)) and kwargs == {"choose": False}
    assert _same_batches(input_batches(trainset, 1), input_batches(trainset, 1, seed=0))
    MagnitudeConfig(refit=True, include=("*",), exclude=("qa_outputs",)).check_model(tiny.config)


def test_prune_now_applies_the_whole_target_unless_asked_for_the_schedules_start(tiny):
    cfg = MagnitudeConfig(sparsity=0.5, schedule="cubic", initial=0.2)
    whole = copy.deepcopy(tiny)
    prune_now(whole, cfg)
    prune_now(tiny, cfg, gradual=True)
    assert abs(_sparsity(whole) - 0.5) < 2e-3 and abs(_sparsity(tiny) - 0.2) < 2e-3


def test_the_hooks_hold_the_training_windows_from_prepare_to_every_step(tiny, trainset):
    cfg = MagnitudeConfig(sparsity=0.5, schedule="cubic", ramp=0.5, update_every=2, initial=0.1, select="input",
                          refit_batches=1)  # fmt: skip
    hooks = cfg.hooks()
    hooks.prepare(tiny, trainset)  # the schedule's start, weighted by inputs: needs the windows
    assert abs(_sparsity(tiny) - 0.1) < 2e-3
    hooks.after_step(tiny, 0, 2, 8)  # the windows prepare was given, kept for every step
    assert abs(_sparsity(tiny) - (0.5 - 0.4 * 0.125)) < 2e-3
    assert hooks.may_keep(0, 8, 8) and not hooks.may_keep(0, 2, 8) and hooks.fingerprint == {"prune": cfg.to_dict()}


def test_gradient_importance_removes_what_the_span_loss_ranks_lowest(tiny, trainset):
    by_hand = copy.deepcopy(tiny)
    summary = StructuredConfig(heads=0.25, ffn=0.5, importance="gradient", importance_batches=1).apply(tiny, trainset)
    heads, ffn = gradient_scores(by_hand, list(label_batches(trainset, 1, seed=0)), span_loss)
    plan = heads_to_remove(heads, 0.25)
    prune_heads_(by_hand, plan)
    prune_ffn_(by_hand, 0.5, ffn)
    assert summary["heads_removed"] == {str(k): v for k, v in plan.items()}
    want = by_hand.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in tiny.state_dict().items())
    assert not _same_batches(list(label_batches(trainset, 1, seed=0)), list(label_batches(trainset, 1, seed=1)))


def test_structured_refusals_and_records_word_for_word(tiny, trainset):
    with pytest.raises(EdgeQAError) as e:
        StructuredConfig(heads=0.5, importance="gradient").apply(tiny, None)
    assert str(e.value) == "gradient importance needs training data to measure the loss on"
    assert StructuredConfig(ffn=0.5).record(tiny) == {"heads_per_layer": [4, 4], "intermediate_size": 128}
    StructuredConfig(heads=0.25).apply(tiny)
    with pytest.raises(EdgeQAError) as e:
        StructuredConfig(heads=0.25).apply(tiny)
    assert str(e.value) == "this model already lost heads to pruning; prune its heads once, from the unpruned model"
    with pytest.raises(EdgeQAError) as e:
        StructuredConfig(heads=0.25).check_model(tiny.config)
    assert str(e.value) == "the model already lost heads to pruning; prune heads once, from the unpruned model"
    tiny.config.model_type = "distilbert"
    with pytest.raises(EdgeQAError) as e:
        StructuredConfig(ffn=0.5).check_model(tiny.config)
    assert str(e.value).startswith("structured pruning knows bert models; this one is 'distilbert'")
    attention = DistillConfig.from_dict({"train": {"data": "t"}, "stages": [{"loss": {"attention": 1.0}}]})
    with pytest.raises(EdgeQAError) as e:
        StructuredConfig(heads=0.25).check_recovery(attention)
    assert str(e.value) == "attention transfer needs the teacher's head count; heads are being pruned"


def test_a_record_of_flat_settings_is_described_by_its_method(tiny):
    """Records written before steps kept a description hold every method's settings, the others at defaults."""
    record = {"settings": {**FLAT_V2, "method": "structured", "heads": 0.25}, "heads_per_layer": [3, 4],
              "intermediate_size": 128}  # fmt: skip
    assert describe_pruning(record) == "structured (magnitude): heads per layer [3, 4], FFN 128"


def test_pruning_batches_draw_each_window_once_longest_first_padded_with_zeros(trainset):
    batches = list(label_batches(trainset, 2, size=16))  # all 32 windows
    lengths = torch.cat([b["attention_mask"].sum(1) for b in batches]).tolist()
    assert sorted(lengths, reverse=True) == lengths and sorted(lengths) == sorted(trainset.lengths.tolist())
    assert len(set(lengths)) > 1
    ids, mask = (torch.cat([b[k].flatten() for b in batches]) for k in ("input_ids", "attention_mask"))
    assert (mask == 0).any() and (ids[mask == 0] == 0).all()
