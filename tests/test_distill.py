"""Distillation's building blocks and the loop's in-process checks: losses, span labels, step batches, an
interrupted run resumed in process, gradient accumulation. These are the fast tests `make mutants` runs (pyproject's
[tool.mutmut] selects them from this file by name); students and refusals are in test_distill_setup.py, whole runs
in test_distill_runs.py."""

from __future__ import annotations

import json
import logging
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TOY_QAS, TRAIN, make_tiny_qa_model, write_squad
from edgeqa.bench.engines import load_tokenizer
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import QAConfig, tokenize
from edgeqa.bench.squad import load_squad
from edgeqa.compress import train_loop
from edgeqa.compress.checkpoint import load_checkpoint, restore, save_checkpoint
from edgeqa.compress.devices import Dist
from edgeqa.compress.losses import LossConfig, distill_loss, score_mse, span_ce, span_kl, token_mse
from edgeqa.compress.trainset import StepBatches, StepSampler, as_is, epoch_batches, load_trainset, span_labels
from edgeqa.pipeline.run import run_recipe


@pytest.fixture
def toy_train(tmp_path) -> Path:
    """48 answered questions: enough windows for a few batches of a tiny run."""
    return write_squad(tmp_path / "train.json", TOY_QAS * 16)


def _recipe(tmp_path, teacher, train, dev, distill: str, name: str = "d", qa: str | None = None) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        (f"qa: {qa}\n" if qa else "")
        + textwrap.dedent(f"""\
        name: {name}
        model: {teacher}
        eval:
          data: {dev}
        steps:
          - distill:
              name: student
        """)
        + textwrap.indent(textwrap.dedent(distill).replace("TRAIN", str(train)), " " * 6)
    )
    return path


# --- losses and labels ---------------------------------------------------------------------------------------------


def test_losses_mask_padding_and_scale_with_temperature():
    torch.manual_seed(0)
    start, end = torch.randn(2, 6), torch.randn(2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    labels = torch.tensor([[1, 2], [3, 5]])
    assert float(span_kl(start, end, start, end, mask, 2.0)) == pytest.approx(0.0, abs=1e-6)
    # Padding logits do not move the hard loss.
    noisy = start.clone()
    noisy[0, 4:] = 50.0
    assert float(span_ce(noisy, end, labels, mask)) == pytest.approx(float(span_ce(start, end, labels, mask)), rel=1e-6)
    # Unpadded, the hard loss is transformers' (start CE + end CE) / 2, summed instead of averaged.
    full = torch.ones(2, 6, dtype=torch.bool)
    ce = torch.nn.functional.cross_entropy
    expected = (ce(start, labels[:, 0]) + ce(end, labels[:, 1])) / 2 * 2
    assert float(span_ce(start, end, labels, full)) == pytest.approx(float(expected), rel=1e-6)
    t_start, t_end = torch.randn(2, 6), torch.randn(2, 6)
    kl1, kl4 = span_kl(start, end, t_start, t_end, mask, 1.0), span_kl(start, end, t_start, t_end, mask, 4.0)
    low = [x.bfloat16() for x in (start, end, t_start, t_end)]
    assert span_kl(*low, mask, 2.0).dtype == torch.float32  # summed in float32 under bf16 autocast too
    assert float(kl1) > 0 and float(kl4) > 0 and float(kl1) != pytest.approx(float(kl4))
    # Hidden-state MSE averages over real tokens only.
    a, b = torch.zeros(2, 6, 3), torch.zeros(2, 6, 3)
    b[0, 4:] = 7.0
    assert float(token_mse(a, b, mask)) == 0.0
    terms = distill_loss(
        LossConfig(hard=0.25, soft=1.0),
        {},
        {"start": start, "end": end},
        {"start": t_start, "end": t_end},
        labels,
        mask,
    )
    assert float(terms["loss"]) == pytest.approx(0.25 * float(terms["hard"]) + float(terms["soft"]), rel=1e-6)


def test_soft_loss_is_t_squared_times_the_kl_of_softened_distributions():
    """Worked by hand: teacher logits (ln 3, 0) against a student's (0, 0), a third position masked out.
    T=1: p = (3/4, 1/4), q = (1/2, 1/2): KL = 3/4 ln 1.5 + 1/4 ln 0.5 = 0.130812.
    T=2: p = (sqrt 3, 1) / (sqrt 3 + 1) = (0.633975, 0.366025): KL = 0.036341, times T^2 = 4: 0.145363."""
    student = torch.tensor([[0.0, 0.0, 9.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0, -9.0]])
    mask = torch.tensor([[True, True, False]])
    # Start and end alike: their mean is the KL of one of them.
    assert float(span_kl(student, student, teacher, teacher, mask, 1.0)) == pytest.approx(0.130812, abs=1e-6)
    assert float(span_kl(student, student, teacher, teacher, mask, 2.0)) == pytest.approx(0.145363, abs=1e-6)


def test_hidden_state_loss_averages_over_real_tokens_only():
    """By hand: example 0 has 2 real tokens differing by 2 in every feature (4 each) and a padded one differing
    by 49; example 1 has 1 real token differing by 1: 4 + 1 = 5."""
    a = torch.ones(2, 3, 4)
    b = torch.full((2, 3, 4), 50.0)
    b[0, :2] = 3.0
    b[1, 0] = 2.0
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert float(token_mse(a, b, mask)) == pytest.approx(5.0)


def test_attention_score_loss_averages_over_real_token_pairs_and_heads():
    """By hand: 2 heads, 3 tokens. Example 0 has 2 real tokens (4 pairs x 2 heads), differences of 1 there and 100
    on padded pairs, which must not count: 1.0. Example 1, all real (9 pairs x 2 heads), differences of 2: 4.0."""
    a = torch.full((2, 2, 3, 3), 3.0)
    b = torch.full((2, 2, 3, 3), 100.0)
    b[0, :, :2, :2] = 4.0
    b[1] = 5.0
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert float(score_mse(a, b, mask)) == pytest.approx(5.0)
    # One head, one real token: one pair, (3 - 6)^2 / 1 = 9.
    one = torch.tensor([[True, False]])
    assert float(score_mse(torch.full((1, 1, 2, 2), 3.0), torch.full((1, 1, 2, 2), 6.0), one)) == pytest.approx(9.0)


def test_intermediate_losses_follow_the_layer_map_by_hand():
    """Constant tensors, so each MSE is a squared difference. Student hidden states s[k] = 0.1 k (k = 0 is the
    embedding output), teacher's t[0] = 0.5 and t[k] = k; scores s = 0.1 k, t = k + 1 for layers k. Map {0: 1, 1: 2}:
    embedding (0.5 - 0)^2 = 0.25; hidden (2 - 0.1)^2 + (3 - 0.2)^2 = 11.45; attention (2 - 0)^2 + (3 - 0.1)^2 = 12.41;
    loss 1 x 0.25 + 2 x 11.45 + 0.5 x 12.41 = 29.355."""
    full = (1, 2, 3)  # one example, 2 tokens, width 3
    student = {
        "hidden": [torch.full(full, 0.1 * k) for k in range(3)],
        "scores": [torch.full((1, 2, 2, 2), 0.1 * k) for k in range(2)],
    }
    teacher = {
        "hidden": [torch.full(full, 0.5)] + [torch.full(full, float(k)) for k in range(1, 4)],
        "scores": [torch.full((1, 2, 2, 2), k + 1.0) for k in range(3)],
    }
    cfg = LossConfig(embedding=1.0, hidden=2.0, attention=0.5)
    terms = distill_loss(cfg, {0: 1, 1: 2}, student, teacher, torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool))
    assert {k: round(float(v), 4) for k, v in terms.items()} == {
        "embedding": 0.25,
        "hidden": 11.45,
        "attention": 12.41,
        "loss": 29.355,
    }


def test_loss_config_rejects_nonsense():
    with pytest.raises(EdgeQAError, match="at least one positive"):
        LossConfig()
    with pytest.raises(EdgeQAError, match="negative"):
        LossConfig(hard=1.0, soft=-1.0)
    with pytest.raises(EdgeQAError, match="unknown loss setting"):
        LossConfig.from_dict({"hard": 1.0, "kd": 1.0})
    assert LossConfig.from_dict(LossConfig(hard=1, layer_map={0: 1}).to_dict()) == LossConfig(hard=1, layer_map={0: 1})
    with pytest.raises(EdgeQAError) as e:
        LossConfig()
    assert str(e.value) == "a loss needs at least one positive weight among hard, soft, hidden, attention, embedding"
    with pytest.raises(EdgeQAError) as e:
        LossConfig(soft=1.0, temperature=0.0)  # a division by zero in the softened distributions
    assert str(e.value) == "temperature must be positive, got 0.0"
    assert LossConfig(hidden=1.0, layer_map={"0": "2", 1: 5.0}).layer_map == {0: 2, 1: 5}  # YAML may quote numbers
    with pytest.raises(EdgeQAError) as e:
        LossConfig(hidden=1.0, layer_map={0: "top"})
    assert str(e.value).startswith("layer_map maps student layer numbers to teacher layer numbers: invalid literal")


def _label_texts(ts, examples, tokenizer, cfg) -> list[tuple[str, str]]:
    """(text under each labelled span, gold answer) for windows that hold their answer; offsets re-tokenised."""
    f = tokenize(tokenizer, [e.question for e in examples], [e.context for e in examples], cfg)
    assert f.input_ids == [ids.tolist() for ids in ts.input_ids]  # chunked tokenisation cuts the same windows
    out = []
    for w in np.flatnonzero(ts.labels[:, 0] > 0):
        ex = examples[ts.example_index[w]]
        s, e = ts.labels[w]
        out.append((ex.context[f.offsets[w, s, 0] : f.offsets[w, e, 1]], ex.answers[0]))
    return out


def test_span_labels_point_at_the_answer_tokens(tiny_qa_model, toy_train):
    tokenizer = load_tokenizer(tiny_qa_model)
    cfg = QAConfig(max_length=20, doc_stride=4)
    ts = load_trainset(toy_train, None, tokenizer, cfg, chunk=5)
    assert len(ts) > ts.questions  # long contexts were split, and some windows miss the answer
    inside = ts.labels[:, 0] > 0
    assert inside.any() and (~inside).any()
    pairs = _label_texts(ts, load_squad(toy_train).examples, tokenizer, cfg)
    assert pairs and all(got == gold for got, gold in pairs)


def test_span_labels_on_real_squad_train(teacher):
    tokenizer = load_tokenizer(teacher)
    ts = load_trainset(TRAIN, 300, tokenizer, QAConfig(), chunk=128)
    pairs = _label_texts(ts, load_squad(TRAIN, 300).examples, tokenizer, QAConfig())
    hits = [got.strip().lower() == gold.strip().lower() for got, gold in pairs]
    assert len(hits) >= 295 and np.mean(hits) > 0.97  # word pieces can widen a span past odd punctuation


def test_span_labels_mark_windows_without_the_answer():
    offsets = np.full((2, 6, 2), -1, dtype=np.int32)
    offsets[:, 2:5] = [[0, 3], [4, 8], [9, 12]]
    labels = span_labels(offsets, np.array([4, 13]), np.array([12, 15]))
    assert labels.tolist() == [[3, 4], [0, 0]]


def test_step_sampler_gives_each_process_its_share_of_the_epoch_batches_from_any_step():
    lengths = np.random.default_rng(0).integers(5, 60, size=70)  # 8 full batches of 8 per epoch
    steps = list(StepSampler(lengths, 8, seed=3, stage=1, start=0, total=20, rank=1, world=2, micro_batch_size=3))
    assert len(steps) == 20
    for step, micro in enumerate(steps):
        epoch, j = divmod(step, 8)
        assert [len(c) for c in micro] == [3, 1]  # this process's 4 windows, in micro-batches of 3
        np.testing.assert_array_equal(np.concatenate(micro), epoch_batches(lengths, 8, 3, 1, epoch)[j][1::2])
    resumed_sampler = StepSampler(lengths, 8, seed=3, stage=1, start=13, total=20, rank=1, world=2, micro_batch_size=3)
    resumed = list(resumed_sampler)
    assert len(resumed) == len(resumed_sampler) == 7  # the loader's length is the steps left
    assert len(StepSampler(lengths, 8, seed=3, stage=1, start=20, total=20)) == 0  # a stage already done
    assert all(np.array_equal(np.concatenate(a), np.concatenate(b)) for a, b in zip(resumed, steps[13:], strict=True))


def test_an_epoch_is_full_batches_of_similar_length_in_random_order():
    lengths = np.random.default_rng(0).permutation(np.arange(10, 52))  # 42 windows, every length once
    batches = epoch_batches(lengths, 4, seed=1, stage=0, epoch=0)  # one chunk (50 batches of 4 hold 200)
    # The 42 by length, longest first, cut into 10 batches of 4: the two shortest are left for another epoch.
    by_length = np.argsort(-lengths)
    expected = {frozenset(by_length[i : i + 4].tolist()) for i in range(0, 40, 4)}
    assert {frozenset(b.tolist()) for b in batches} == expected and len(batches) == 10
    assert [sorted(lengths[b].tolist()) for b in batches] != sorted(sorted(lengths[b].tolist()) for b in batches)
    assert [b.tolist() for b in epoch_batches(lengths, 4, 1, 0, 0)] == [b.tolist() for b in batches]  # seeded
    for other in ((2, 0, 0), (1, 1, 0), (1, 0, 1)):  # another seed, stage or epoch: another order
        assert [b.tolist() for b in epoch_batches(lengths, 4, *other)] != [b.tolist() for b in batches]
    # Several chunks (50 batches of 2 = 100 windows each): 100 + 100 + 5 windows give 50 + 50 + 2 full batches.
    many = epoch_batches(np.random.default_rng(1).integers(5, 60, size=205), 2, seed=0, stage=0, epoch=0)
    assert len(many) == 102 and all(len(b) == 2 for b in many)
    assert len(set(np.concatenate(many).tolist())) == 204  # no window twice; one of the last chunk left out
    one_process = list(StepSampler(lengths, 4, seed=1, stage=0, start=0, total=3))  # rank 0 of 1 by default
    assert [np.concatenate(m).tolist() for m in one_process] == [b.tolist() for b in batches[:3]]


def test_loader_workers_pad_the_same_batches_as_the_training_process(tiny_qa_model, toy_train):
    """The GPU path pads in worker processes: the same tensors, in the same order, as padding in the loop."""
    ts = load_trainset(toy_train, None, load_tokenizer(tiny_qa_model), QAConfig(max_length=24, doc_stride=4))
    logits = np.random.default_rng(0).standard_normal((len(ts), 2, 24)).astype(np.float16)
    sampler = StepSampler(ts.lengths, 8, seed=0, stage=0, start=2, total=9, micro_batch_size=5)
    batches = StepBatches(ts, 0, logits)
    loader = torch.utils.data.DataLoader(batches, sampler=sampler, batch_size=None, collate_fn=as_is, num_workers=2)
    got = list(loader)
    assert len(got) == 7
    for step, micro in zip(got, sampler, strict=True):
        expected = batches[micro]
        assert [b.keys() for b in step] == [b.keys() for b in expected]
        assert all(torch.equal(a[k], b[k]) for a, b in zip(step, expected, strict=True) for k in a)
    first = got[0][0]
    assert first["teacher_logits"].shape == (5, 2, first["input_ids"].shape[1])  # cut to the batch's width


# The two parameters whose gradient is exactly zero: start/end softmaxes run over positions, so what is added at
# every position (the QA head's bias, and the last LayerNorm's bias, which reaches the logits only through that
# head) cannot change the loss. Adam divides each gradient by its own size, so their gradients' rounding noise
# becomes steps of up to lr, different in every summation order: they are left out of the comparison.
# Float32 rounding of one update is about 1.2e-7 (2^-23) on weights of order 1; over 4 steps, with a factor 2 to
# spare: 1e-6, three orders of magnitude below one Adam step at lr 1e-3.
ROUNDING = 1e-6


def assert_same_up_to_rounding(a: dict, b: dict, last_layer: int) -> None:
    """Equal weights up to float summation order, outside the parameters that get no gradient at all."""
    skip = {"qa_outputs.bias", f"bert.encoder.layer.{last_layer}.output.LayerNorm.bias"}
    diff = {k: float((a[k].float() - b[k].float()).abs().max()) for k in a if k not in skip}
    worst = max(diff, key=diff.get)
    assert diff[worst] <= ROUNDING, f"{worst} differs by {diff[worst]:.2e}"


# --- the loop, in process ----------------------------------------------------------------------------------------


def test_an_interrupted_run_resumes_in_process_to_the_same_weights(tmp_path, toy_train, toy_squad, monkeypatch, caplog):
    """The same resume without a subprocess (fast enough for `make mutants`): interrupted between checkpoints by an
    exception from inside a step, then run again in the same process."""
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2)
    block = """\
    student: {layers: [0, 1]}
    train: {data: TRAIN, batch_size: 8, precision: fp32, eval_every: 4, eval_limit: 3, checkpoint_every: 3}
    stages:
      - {loss: {hard: 0.5, soft: 0.5, temperature: 2.0}, max_steps: 4, lr: 1.0e-3}
      - {loss: {hard: 1.0}, max_steps: 5, lr: 1.0e-3}
    """
    path = _recipe(tmp_path, teacher, toy_train, toy_squad, block)
    whole = run_recipe(path, tmp_path / "whole")
    real, calls = train_loop.micro_step, {"n": 0}

    def dies_at_step_8(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # stage 2, step 4: its checkpoint at step 3 is the last one
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_loop, "micro_step", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(path, tmp_path / "killed")
    monkeypatch.setattr(train_loop, "micro_step", real)
    with caplog.at_level(logging.INFO, logger="edgeqa.compress.checkpoint"):
        resumed = run_recipe(path, tmp_path / "killed")
    checkpoint = tmp_path / "killed" / "d" / "work" / "student" / "checkpoint.pt"
    assert f"resuming from {checkpoint}: stage 1, step 3" in caplog.text
    folder = resumed / "models" / "student"
    starts = json.loads((folder / "training.json").read_text())["starts"]
    assert starts == [{"stage": 0, "step": 0, "steps_run": 7}, {"stage": 1, "step": 3, "steps_run": 2}]
    a = load_file(whole / "models" / "student" / "model.safetensors")
    b = load_file(folder / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = (whole / "models" / "student" / "train_log.jsonl").read_text().splitlines()
    log_b = (folder / "train_log.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "windows_per_s"} for x in log_a]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "windows_per_s"} for x in log_b]


def test_in_process_resume_refuses_a_checkpoint_of_other_settings_or_unreadable(tmp_path):
    trainee = torch.nn.Linear(2, 2)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"lr": 1e-3}, trainee, None, None, 0, 5, {}, [], [], 1.0, None)
    assert load_checkpoint(path, {"lr": 1e-3})["step"] == 5
    with pytest.raises(EdgeQAError, match="checkpoint.pt: checkpoint of a run with other settings; delete it"):
        load_checkpoint(path, {"lr": 2e-3})
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeQAError, match="checkpoint.pt: unreadable checkpoint"):
        load_checkpoint(path, {"lr": 1e-3})
    optimizer = torch.optim.AdamW(trainee.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    two = {"model": trainee.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
           "rng": [{"cpu": torch.get_rng_state(), "cuda": None}] * 2}  # fmt: skip
    with pytest.raises(EdgeQAError, match="saved by 2 processes; resume it with as many"):
        restore(two, trainee, optimizer, scheduler, Dist())


def test_gradient_accumulation_gives_the_updates_of_the_whole_batch(tmp_path, toy_train, toy_squad):
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2, dropout=0.0)
    weights = []
    for micro in ("null", "3"):  # 8 windows in one pass, or in passes of 3, 3 and 2
        block = f"""\
        student: {{layers: [0, 1]}}
        train: {{data: TRAIN, batch_size: 8, micro_batch_size: {micro}, precision: fp32, checkpoint_every: 50}}
        stages:
          - {{loss: {{hard: 1.0}}, max_steps: 3, lr: 1.0e-3}}
        """
        root = run_recipe(_recipe(tmp_path, teacher, toy_train, toy_squad, block, name=f"m{micro}"), tmp_path / "r")
        weights.append(load_file(root / "models" / "student" / "model.safetensors"))
    assert_same_up_to_rounding(weights[0], weights[1], last_layer=1)
