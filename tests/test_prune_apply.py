"""What each pruning method does when the pipeline applies it and when recovery training carries it: the sparsity
it starts from, when a cubic schedule moves and refits, what it refuses from a config alone, what it records, and
the training windows pruning reads. Each against values worked out by hand on a tiny BERT."""

from __future__ import annotations

import pytest
import torch

from conftest import TOY_QAS, make_tiny_qa_model, write_squad
from edgeqa.bench.engines import load_torch_qa_model
from edgeqa.bench.files import EdgeQAError
from edgeqa.compress import prune_magnitude
from edgeqa.compress.losses import span_ce
from edgeqa.compress.prune import describe_pruning, prune_now
from edgeqa.compress.prune_data import INPUT_NAMES, input_batches, label_batches, model_inputs
from edgeqa.compress.prune_inc import PatternConfig, check_pattern
from edgeqa.compress.prune_magnitude import MagnitudeConfig, cubic_sparsity, sparsity_report
from edgeqa.compress.prune_structured import StructuredConfig, span_loss
from edgeqa.compress.train import distill
from edgeqa.compress.train_config import DistillConfig


def _sparsity(model) -> float:
    return sparsity_report(model)["pruned_matrices_sparsity"]


def test_magnitude_pruning_reads_training_windows_only_to_refit_or_measure_inputs(tiny):
    assert MagnitudeConfig().data_windows == 0 and not MagnitudeConfig().needs_data
    assert MagnitudeConfig(refit=True, refit_batches=3).data_windows == 48  # batches of 16 windows
    assert MagnitudeConfig(select="input", refit_batches=2).data_windows == 32
    assert MagnitudeConfig(refit=True).why_data == "refit fits the kept weights"
    assert MagnitudeConfig(select="input").why_data == "select: input measures the layers' inputs"
    with pytest.raises(EdgeQAError) as e:
        MagnitudeConfig(refit=True).apply(torch.nn.Sequential(), None)
    assert str(e.value).startswith("no nn.Linear layer matches")  # the layers are found before anything else
    with pytest.raises(EdgeQAError) as e:
        MagnitudeConfig(select="input").apply(tiny, None)
    assert str(e.value) == "select: input measures the layers' inputs on training windows; give training data"
    assert _sparsity(tiny) == 0.0  # refused before any mask


def test_a_refit_needs_every_pruned_matrix_inside_a_numbered_block(tiny):
    MagnitudeConfig(refit=True).check_model(tiny.config)  # the encoder's matrices: all in layer.N
    MagnitudeConfig(include=("*",)).check_model(tiny.config)  # without refit the QA head may be pruned too
    with pytest.raises(EdgeQAError, match="qa_outputs is not inside a numbered block"):
        MagnitudeConfig(refit=True, include=("*",)).check_model(tiny.config)


@pytest.mark.parametrize(
    "settings, gradual, expected",
    [
        ({"sparsity": 0.5}, False, 0.5),
        ({"sparsity": 0.5}, True, 0.5),  # one-shot: its target at once, recovery or not
        ({"sparsity": 0.5, "schedule": "cubic", "initial": 0.25}, True, 0.25),  # a schedule starts at its initial
        ({"sparsity": 0.5, "schedule": "cubic", "initial": 0.25}, False, 0.5),  # pruned at once: the target
        ({"sparsity": 0.5, "schedule": "cubic"}, True, 0.0),
    ],
)
def test_applying_magnitude_pruning_starts_where_its_schedule_does(tiny, settings, gradual, expected):
    summary = MagnitudeConfig(**settings).apply(tiny, None, gradual)
    assert summary == {"matrices": 12}  # 2 layers x (query, key, value, output, intermediate, output)
    assert _sparsity(tiny) == pytest.approx(expected, abs=1e-3)


def test_a_refit_runs_only_when_weights_go(tiny, trainset, monkeypatch):
    seen = []
    monkeypatch.setattr(prune_magnitude, "refit_kept_weights", lambda *a, **k: seen.append((a[3], k)) or {"r": 1})
    cubic = MagnitudeConfig(sparsity=0.5, schedule="cubic", refit=True, refit_batches=1, refit_to="matrix")
    assert cubic.apply(tiny, trainset, gradual=True) == {"matrices": 12}  # nothing pruned yet: nothing to refit
    assert seen == []
    obs = MagnitudeConfig(sparsity=0.5, refit=True, refit_batches=1, select="obs")
    assert obs.apply(tiny, trainset) == {"matrices": 12, "refit": {"r": 1}}
    assert seen == [("model", {"choose": True})]


def test_a_cubic_schedule_moves_its_masks_every_update_and_at_the_end(tiny, trainset, monkeypatch):
    refits, measured = [], []
    monkeypatch.setattr(prune_magnitude, "refit_kept_weights", lambda *a, **k: refits.append(len(a[2])))
    real_rms = prune_magnitude.input_rms
    monkeypatch.setattr(
        prune_magnitude, "input_rms", lambda m, layers, b: measured.append(len(b)) or real_rms(m, layers, b)
    )
    cfg = MagnitudeConfig(sparsity=0.5, schedule="cubic", ramp=0.5, update_every=4, refit=True, refit_batches=1)
    cfg.apply(tiny, trainset, gradual=True)
    total = 10  # the target at step 5 (ramp 0.5); updates at steps 4 and 8, and at the last step
    for step in range(1, total + 1):
        cfg.follow(tiny, trainset, step, total)
        moved = step in (4, 8, 10)
        if moved:
            assert _sparsity(tiny) == pytest.approx(cubic_sparsity(step, total, 0.5, 0.5), abs=2e-3)
    # a refit where the masks grew by at least half a point since the last update: step 4 (0 -> 0.496), not step 8
    # (0.496 -> 0.5) nor 10 (0.5 -> 0.5)
    assert refits == [1]
    assert measured == []  # select: magnitude reads no inputs
    assert MagnitudeConfig(sparsity=0.5).at_target(0, 10) and not cfg.at_target(4, 10)


def test_input_weighted_choice_measures_inputs_only_while_the_masks_grow(tiny, trainset, monkeypatch):
    seeds = []
    real = MagnitudeConfig._input_rms
    monkeypatch.setattr(MagnitudeConfig, "_input_rms", lambda self, m, layers, ts, seed: seeds.append(seed) or real(
        self, m, layers, ts, seed))  # fmt: skip
    cfg = MagnitudeConfig(sparsity=0.5, schedule="cubic", ramp=0.5, update_every=2, select="input", refit_batches=1)
    cfg.apply(tiny, trainset, gradual=True)  # initial 0: nothing to choose yet
    for step in range(1, 9):
        cfg.follow(tiny, trainset, step, 8)
    assert seeds == [2, 4]  # the ramp ends at step 4: later updates keep every nonzero weight, measuring nothing


def test_a_one_shot_schedule_never_moves_during_recovery(tiny):
    cfg = MagnitudeConfig(sparsity=0.5)
    cfg.apply(tiny)
    before = {n: m.weight_mask.clone() for n, m in prune_magnitude.prunable_linears(tiny).items()}
    for step in (50, 100):
        cfg.follow(tiny, None, step, 100)
    assert all(torch.equal(m.weight_mask, before[n]) for n, m in prune_magnitude.prunable_linears(tiny).items())


def test_the_saved_model_has_its_masks_folded_in_and_the_training_one_keeps_them(tiny):
    cfg = MagnitudeConfig(sparsity=0.5)
    cfg.apply(tiny)
    saved = cfg.baked(tiny)
    q = "bert.encoder.layer.0.attention.self.query"
    assert hasattr(dict(tiny.named_modules())[q], "weight_orig")  # still masked: training goes on
    plain = dict(saved.named_modules())[q]
    assert not hasattr(plain, "weight_orig") and "weight" in dict(plain.named_parameters())
    assert torch.equal(plain.weight, dict(tiny.named_modules())[q].weight)


def test_structured_pruning_refuses_from_the_config_alone(tiny):
    config = tiny.config
    StructuredConfig(heads=0.5).check_model(config)  # 4 of 8 heads
    with pytest.raises(EdgeQAError) as e:
        StructuredConfig(heads=0.95).check_model(config)  # round(7.6) = 8 of 8
    assert str(e.value) == "heads=0.95 removes every head"
    StructuredConfig(heads=0.9).check_model(config)  # round(7.2) = 7: one head is left
    config.pruned_heads = {0: [1]}
    with pytest.raises(EdgeQAError, match="the model already lost heads to pruning"):
        StructuredConfig(heads=0.25).check_model(config)
    StructuredConfig(ffn=0.5).check_model(config)  # neurons may be pruned again
    config.model_type = "distilbert"
    with pytest.raises(EdgeQAError, match="structured pruning knows .*; this one is 'distilbert'"):
        StructuredConfig(ffn=0.5).check_model(config)
    attention = DistillConfig.from_dict({"train": {"data": "t"}, "stages": [{"loss": {"attention": 1.0}}]})
    with pytest.raises(EdgeQAError, match="attention transfer needs the teacher's head count"):
        StructuredConfig(heads=0.25).check_recovery(attention)
    StructuredConfig(ffn=0.25).check_recovery(attention)  # neurons alone leave the head count


def test_structured_pruning_removes_and_records_what_it_says(tiny, trainset):
    assert StructuredConfig(heads=0.5).data_windows == 0
    assert StructuredConfig(heads=0.5, importance="gradient", importance_batches=2).data_windows == 32
    with pytest.raises(EdgeQAError, match="gradient importance needs training data"):
        StructuredConfig(heads=0.5, importance="gradient").apply(tiny, None)
    cfg = StructuredConfig(heads=0.25, ffn=0.5)  # 2 of 8 heads, half of each layer's 128 neurons
    summary = cfg.apply(tiny)
    removed = summary["heads_removed"]
    assert sum(len(v) for v in removed.values()) == 2 and all(isinstance(k, str) for k in removed)
    width = tiny.config.intermediate_size
    assert summary["intermediate_size"] == width == 64 == tiny.bert.encoder.layer[1].intermediate.dense.out_features
    record = cfg.record(tiny)
    assert record["heads_per_layer"] == [4 - len(removed.get(str(i), [])) for i in range(2)]
    assert record["intermediate_size"] == width
    assert cfg.describe(record) == f"structured (magnitude): heads per layer {record['heads_per_layer']}, FFN {width}"
    assert StructuredConfig(heads=0.25).describe({}) == "structured (magnitude): heads 0.25, FFN 0.0"
    with pytest.raises(EdgeQAError, match="this model already lost heads to pruning"):
        StructuredConfig(heads=0.25).apply(tiny)
    assert StructuredConfig(ffn=0.25).apply(tiny)["heads_removed"] == {}


def test_gradient_importance_differentiates_the_span_loss_of_the_labelled_batch(tiny, trainset):
    batch = next(label_batches(trainset, 1, size=4))
    out = tiny(**model_inputs(batch))
    expected = span_ce(out.start_logits, out.end_logits, batch["labels"], batch["attention_mask"].bool())
    assert float(span_loss(tiny, batch).detach()) == pytest.approx(float(expected.detach()))
    assert float(expected.detach()) > 0


def test_pruning_reads_seeded_random_windows_longest_first(trainset):
    batches = list(label_batches(trainset, 2, size=3, seed=1))
    assert [len(b["labels"]) for b in batches] == [3, 3]
    picked = torch.cat([b["input_ids"][:, :1] for b in batches])  # every window starts with [CLS]
    assert len(picked) == 6
    lengths = [int(b["attention_mask"].sum(1).max()) for b in batches]
    assert lengths[0] >= lengths[1]  # longest first: similar lengths share a batch
    again = list(label_batches(trainset, 2, size=3, seed=1))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(batches, again, strict=True) for k in a)
    other = list(label_batches(trainset, 2, size=3, seed=2))
    assert not all(torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"], b["input_ids"])
                   for a, b in zip(batches, other, strict=True))  # fmt: skip
    assert set(batches[0]) == {*INPUT_NAMES, "labels"}
    everything = list(label_batches(trainset, 1000, size=16))  # more than there are: each window once
    assert sum(len(b["labels"]) for b in everything) == len(trainset)
    inputs = input_batches(trainset, 2, seed=1)
    assert [set(b) for b in inputs] == [set(INPUT_NAMES)] * 2 and len(inputs[0]["input_ids"]) == 16


def test_pattern_pruning_refuses_what_it_cannot_do_and_is_never_applied_at_once(tiny):
    layers = prune_magnitude.prunable_linears(tiny)  # 32 x 32, 128 x 32 and 32 x 128 matrices
    check_pattern(layers, "4x1")
    check_pattern(layers, "2:4")
    with pytest.raises(EdgeQAError) as e:
        check_pattern(layers, "3x1")
    assert (
        str(e.value) == "pattern 3x1 does not divide bert.encoder.layer.0.attention.self.query's weight shape (32 x 32)"
    )
    with pytest.raises(EdgeQAError) as e:
        check_pattern({k: v for k, v in layers.items() if "intermediate" in k}, "1x3")  # 128 x 32: columns
    assert str(e.value).startswith("pattern 1x3 does not divide bert.encoder.layer.0.intermediate.dense's")
    with pytest.raises(EdgeQAError, match=r"pattern 3:5 does not divide .*\(32 x 32\)"):
        check_pattern(layers, "3:5")
    with pytest.raises(EdgeQAError, match=r"pattern 4:2: N:M needs 0 < N < M"):
        check_pattern(layers, "4:2")
    with pytest.raises(EdgeQAError, match=r"pattern 0:4: N:M needs 0 < N < M"):
        check_pattern(layers, "0:4")
    with pytest.raises(EdgeQAError, match="prunes during recovery training only; give train and stages"):
        prune_now(tiny, PatternConfig(sparsity=0.5))
    two = DistillConfig.from_dict({"train": {"data": "t"}, "stages": [{"loss": {"hard": 1.0}}] * 2})
    with pytest.raises(EdgeQAError, match="runs over one training stage; give exactly one"):
        PatternConfig(sparsity=0.5).check_recovery(two)
    hooks = PatternConfig(sparsity=0.5, schedule="cubic", ramp=0.5, update_every=2).hooks()
    assert hooks.fingerprint == {"prune": PatternConfig(sparsity=0.5, schedule="cubic", ramp=0.5,
                                                        update_every=2).to_dict()}  # fmt: skip
    assert not hooks.may_keep(0, 2, 10) and hooks.may_keep(0, 6, 10)  # kept only once the ramp is done
    assert PatternConfig(sparsity=0.5, pattern="2:4").describe({}) == "magnitude 2:4 50% (global, oneshot)"
    assert PatternConfig(sparsity=0.5).describe({}) == "magnitude 50% (global, oneshot)"


def test_a_prune_record_is_described_by_its_words_or_by_its_settings():
    assert describe_pruning(None) == describe_pruning({}) == ""
    assert describe_pruning({"description": "as written", "settings": {"method": "magnitude"}}) == "as written"
    assert describe_pruning({"settings": {"method": "magnitude", "sparsity": 0.8}}) == "magnitude 80% (global, oneshot)"
    assert describe_pruning({"method": "future", "settings": {"method": "future"}}) == "future"
    assert describe_pruning({"settings": {"method": "future"}}) == ""


def test_recovery_hooks_prune_first_then_follow_and_save_the_baked_model(tiny, trainset):
    cfg = MagnitudeConfig(sparsity=0.5, schedule="cubic", ramp=0.5, update_every=5, initial=0.1)
    hooks = cfg.hooks()
    hooks.prepare(tiny, trainset)
    assert _sparsity(tiny) == pytest.approx(0.1, abs=2e-3)  # gradual: the schedule's start
    hooks.after_step(tiny, 0, 5, 10)  # the target is reached at step 5
    assert _sparsity(tiny) == pytest.approx(0.5, abs=2e-3)
    saved = hooks.to_save(tiny)
    assert saved is not tiny and not hasattr(saved.bert.encoder.layer[0].attention.self.query, "weight_orig")
    assert hooks.fingerprint == {"prune": cfg.to_dict()} and hooks.may_keep(0, 5, 10) and not hooks.may_keep(0, 4, 10)
    assert StructuredConfig(heads=0.25).baked(tiny) is tiny  # nothing to fold: saved as it is


def test_a_recovery_that_never_evaluates_saves_its_pruned_weights(tmp_path, tiny):
    """The result is saved right after a training step (no evaluation ran an inference pass since): the masked
    weights then hold that step's autograd graph, which the saved copy must not need."""
    teacher = make_tiny_qa_model(tmp_path / "teacher", dropout=0.0)
    data = write_squad(tmp_path / "train.json", TOY_QAS * 16)
    cfg = DistillConfig.from_dict(
        {
            "train": {"data": str(data), "batch_size": 8, "precision": "fp32"},
            "stages": [{"loss": {"hard": 1.0}, "max_steps": 2}],
        }  # fmt: skip
    )
    best = distill(cfg, teacher, tmp_path / "work", None, progress=False, hooks=MagnitudeConfig(sparsity=0.5).hooks())
    saved = load_torch_qa_model(best)
    assert _sparsity(saved) == pytest.approx(0.5, abs=1e-3)
