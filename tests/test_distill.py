"""Distillation: students, losses, labels, the loop's resume and data-parallel runs, and early refusals."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import (
    FAMILIES,
    REPO,
    TOY_QAS,
    TRAIN,
    edgeqa_command,
    kill_when_written,
    make_tiny_qa_model,
    run_to_end,
    write_squad,
)
from edgeqa.bench.engines import load_tokenizer, load_torch_qa_model
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import QAConfig, tokenize
from edgeqa.bench.squad import load_squad
from edgeqa.cli import main
from edgeqa.compress import train as train_mod
from edgeqa.compress.checkpoint import load_checkpoint, restore, save_checkpoint
from edgeqa.compress.losses import LossConfig, distill_loss, score_mse, span_ce, span_kl, token_mse
from edgeqa.compress.recipe import run_recipe
from edgeqa.compress.student import StudentSpec, build_student, default_layer_map, student_config, teacher_layers
from edgeqa.compress.trainset import StepBatches, StepSampler, as_is, epoch_batches, load_trainset, span_labels


@pytest.fixture
def toy_train(tmp_path) -> Path:
    """48 answered questions: enough windows for a few batches of a tiny run."""
    return write_squad(tmp_path / "train.json", TOY_QAS * 16)


def _recipe(tmp_path, teacher, train, dev, distill: str, name: str = "d") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(f"""\
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


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_zero_makes_a_training_forward_what_inference_computes(family, tmp_path):
    model = load_torch_qa_model(make_tiny_qa_model(tmp_path / family, family=family, layers=1))
    inputs = {"input_ids": torch.randint(5, 30, (4, 24)), "attention_mask": torch.ones(4, 24, dtype=torch.long)}
    inputs["attention_mask"][:2, 18:] = 0  # padded rows take the masked attention path
    reference = model.eval()(**inputs).start_logits
    model.train()
    train_mod.set_dropout(model, 0.3)  # some families (ALBERT) train without dropout by default
    assert not torch.allclose(model(**inputs).start_logits, reference)
    train_mod.set_dropout(model, 0.0)
    torch.testing.assert_close(model(**inputs).start_logits, reference)
    assert model.config.to_dict() == load_torch_qa_model(tmp_path / family).config.to_dict()


AVX2 = frozenset({"avx2"})
AVX512 = frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni"})  # bf16 through fp32 emulation only
AVX512_BF16 = AVX512 | {"avx512_bf16"}
AMX = AVX512_BF16 | {"amx_bf16", "amx_int8"}


@pytest.mark.parametrize(
    "asked, device, arch, flags, cuda_bf16, bf16, reason",
    [
        ("auto", "cpu", "x86_64", AVX2, False, False, "auto: no native bf16 on this CPU (isa avx2)"),
        ("auto", "cpu", "x86_64", AVX512, False, False, "auto: no native bf16 on this CPU (isa avx512_vnni)"),
        ("auto", "cpu", "x86_64", AVX512_BF16, False, True, "auto: CPU has avx512_bf16"),
        ("auto", "cpu", "x86_64", AMX, False, True, "auto: CPU has amx_bf16"),
        ("auto", "cpu", "aarch64", frozenset({"asimd", "asimddp", "i8mm", "bf16"}), False, True, "auto: CPU has bf16"),
        (
            "auto",
            "cpu",
            "aarch64",
            frozenset({"asimd", "asimddp"}),
            False,
            False,
            "auto: no native bf16 on this CPU (isa arm64_dotprod)",
        ),
        ("auto", "cuda:0", "x86_64", AVX2, True, True, "auto: CUDA bf16"),
        ("auto", "cuda:1", "x86_64", AMX, False, False, "auto: no bf16 on this GPU"),
        ("fp32", "cpu", "x86_64", AMX, False, False, "given: fp32"),
        ("bf16", "cpu", "x86_64", AVX2, False, True, "given: bf16"),
        ("fp32", "cuda:0", "x86_64", AVX2, True, False, "given: fp32"),
    ],
)
def test_precision_auto_is_bf16_only_where_the_hardware_has_it(asked, device, arch, flags, cuda_bf16, bf16, reason):
    from edgeqa.bench.cpu import CPU

    chosen = train_mod.choose_precision(asked, device, CPU("some cpu", arch, flags), cuda_bf16)
    assert (chosen.bf16, chosen.reason) == (bf16, reason)
    assert chosen.to_dict() == {"asked": asked, "chosen": "bf16" if bf16 else "fp32", "reason": reason}


# --- students ----------------------------------------------------------------------------------------------------


def test_distilbert_student_copies_the_chosen_teacher_layers(tmp_path):
    teacher = load_torch_qa_model(make_tiny_qa_model(tmp_path / "t", layers=6))
    assert teacher_layers(StudentSpec(num_hidden_layers=3), 6) == (0, 2, 4)  # every other one by default
    student = build_student(StudentSpec(layers=(1, 5)), teacher)
    assert student.config.num_hidden_layers == 2
    s, t = student.state_dict(), teacher.state_dict()
    for i, j in enumerate((1, 5)):
        key = "bert.encoder.layer.{}.attention.self.query.weight"
        assert torch.equal(s[key.format(i)], t[key.format(j)])
    assert torch.equal(s["qa_outputs.weight"], t["qa_outputs.weight"])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"])


def test_tinybert_student_copies_only_what_fits(tmp_path):
    teacher = load_torch_qa_model(make_tiny_qa_model(tmp_path / "t", layers=4, hidden=32, heads=4))
    narrow = build_student(StudentSpec(num_hidden_layers=2, intermediate_size=48), teacher)
    s, t = narrow.state_dict(), teacher.state_dict()
    assert s["bert.encoder.layer.0.intermediate.dense.weight"].shape == (48, 32)
    assert torch.equal(
        s["bert.encoder.layer.1.attention.self.key.weight"], t["bert.encoder.layer.1.attention.self.key.weight"]
    )
    thin = build_student(StudentSpec(num_hidden_layers=2, hidden_size=16, num_attention_heads=4), teacher)
    assert thin.config.hidden_size == 16
    assert default_layer_map(2, 4) == {0: 1, 1: 3} and default_layer_map(3, 6) == {0: 1, 1: 3, 2: 5}


@pytest.mark.parametrize(
    "spec, message",
    [
        (StudentSpec(layers=(0, 9)), "do not exist"),
        (StudentSpec(num_hidden_layers=5), "only 4 to initialise"),
        (StudentSpec(hidden_size=30, num_attention_heads=4), "not divisible"),
    ],
)
def test_impossible_students_are_refused_from_the_config(tmp_path, spec, message):
    teacher = load_torch_qa_model(make_tiny_qa_model(tmp_path / "t", layers=4))
    with pytest.raises(EdgeQAError, match=message):
        student_config(spec, teacher.config)


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


# --- the loop ------------------------------------------------------------------------------------------------------


def test_a_killed_distillation_resumes_to_the_same_weights(tmp_path, toy_train, toy_squad):
    """`edgeqa distill` in a process that is SIGKILLed once its first checkpoint exists, started again: it says
    from which step it resumes, runs only the rest, and ends with the weights and log of a run never stopped."""
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=4)
    block = """\
    student: {layers: [0, 2]}
    train: {data: TRAIN, batch_size: 8, precision: fp32, eval_every: 4, eval_limit: 3, checkpoint_every: 3,
            log_every: 1}
    stages:
      - {loss: {hard: 0.5, soft: 0.5, temperature: 2.0}, epochs: 4, lr: 1.0e-3}
    """
    path = _recipe(tmp_path, teacher, toy_train, toy_squad, block)
    whole, killed = tmp_path / "whole" / "d", tmp_path / "killed" / "d"
    run_to_end(edgeqa_command("distill", str(path), "--out", str(whole.parent)), tmp_path / "whole.log", tmp_path)
    checkpoint = killed / "work" / "student" / "checkpoint.pt"
    argv = edgeqa_command("distill", str(path), "--out", str(killed.parent))
    kill_when_written(argv, checkpoint, tmp_path / "first.log", tmp_path)
    assert not (killed / "models" / "student").exists()  # killed before the end
    state = torch.load(checkpoint, weights_only=False)
    at = state["step"]
    assert "dropout" not in state["config"]["train"]  # left at its default, it stays out: older checkpoints resume
    log = run_to_end(argv, tmp_path / "second.log", tmp_path)
    assert f"resuming from {checkpoint}: stage 0, step {at}" in log

    total = json.loads((whole / "models" / "student" / "training.json").read_text())["steps"][0]
    starts = json.loads((killed / "models" / "student" / "training.json").read_text())["starts"]
    assert 0 < at < total
    assert starts == [{"stage": 0, "step": 0, "steps_run": at}, {"stage": 0, "step": at, "steps_run": total - at}]

    def last_and_best(root: Path) -> dict[str, torch.Tensor]:
        last = torch.load(root / "work" / "student" / "checkpoint.pt", weights_only=False)["model"]
        best = load_file(root / "models" / "student" / "model.safetensors")
        return {**{f"last.{k}": v for k, v in last.items()}, **{f"best.{k}": v for k, v in best.items()}}

    a, b = last_and_best(whole), last_and_best(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = (whole / "models" / "student" / "train_log.jsonl").read_text().splitlines()
    log_b = (killed / "models" / "student" / "train_log.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "windows_per_s"} for x in log_a]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "windows_per_s"} for x in log_b]
    # The student loads like any QA model, and the shared cache was filled once.
    load_torch_qa_model(killed / "models" / "student")
    assert len(list((killed.parent / "cache").iterdir())) == 1


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
    real, calls = train_mod._micro_step, {"n": 0}

    def dies_at_step_8(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # stage 2, step 4: its checkpoint at step 3 is the last one
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_micro_step", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(path, tmp_path / "killed")
    monkeypatch.setattr(train_mod, "_micro_step", real)
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
        restore(two, trainee, optimizer, scheduler, train_mod.Dist())


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, toy_train, toy_squad):
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2, dropout=0.0)
    block = """\
    student: {layers: [0, 1]}
    train: {data: TRAIN, batch_size: 8, precision: fp32, eval_limit: 3, checkpoint_every: 50, log_every: 1,
            record_windows: true}
    stages:
      - {loss: {hard: 0.5, soft: 0.5, temperature: 2.0}, max_steps: 4, lr: 1.0e-3, warmup: 0}
    """
    path = _recipe(tmp_path, teacher, toy_train, toy_squad, block)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cli = ["-m", "edgeqa.cli", "distill", str(path)]
    for procs, out in ((1, "one"), (2, "two")):
        done = subprocess.run(
            [*launch, str(procs), *cli, "--out", str(tmp_path / out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    def windows(out: str, rank: int) -> list[list[int]]:
        lines = (tmp_path / out / "d" / "work" / "student" / f"windows-{rank}.jsonl").read_text().splitlines()
        return [json.loads(line)["windows"] for line in lines]

    # Each step, the two processes train on disjoint halves that together are the one process's batch.
    whole, first, second = windows("one", 0), windows("two", 0), windows("two", 1)
    assert len(whole) == len(first) == len(second) == 4
    for w, a, b in zip(whole, first, second, strict=True):
        assert len(w) == 8 and len(a) == len(b) == 4
        assert not set(a) & set(b) and sorted(a + b) == w
    one = load_file(tmp_path / "one" / "d" / "models" / "student" / "model.safetensors")
    two = load_file(tmp_path / "two" / "d" / "models" / "student" / "model.safetensors")
    start = load_torch_qa_model(teacher).state_dict()
    moved = max(float((one[k] - start[k]).abs().max()) for k in one)
    assert moved > 1e-3  # training changed the weights ...
    assert_same_up_to_rounding(one, two, last_layer=1)  # ... and two processes changed them as one did
    info = json.loads((tmp_path / "two" / "d" / "models" / "student" / "training.json").read_text())
    assert info["processes"] == 2
    assert info["bf16"] is False and info["precision"] == {"asked": "fp32", "chosen": "fp32", "reason": "given: fp32"}


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


def _dropout_rates(model: torch.nn.Module) -> frozenset[float]:
    """Every dropout rate in `model`: nn.Dropout modules and the float rates attention modules pass to SDPA."""
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    for m in model.modules():
        rates |= {
            getattr(m, n) for n in ("dropout_prob", "attention_dropout") if isinstance(getattr(m, n, None), float)
        }
    return frozenset(rates)


def test_step_timer_times_every_dropout_setting_on_the_loops_own_step(tmp_path, toy_train, capsys, monkeypatch):
    """Checked on the models the loop's step receives, not on profiler operator names: those depend on the kernels
    a CPU gets (an AVX2-only EPYC showed no `bernoulli` among them), and timings on the machine's load."""
    from edgeqa.compress import step_time

    assert step_time._micro_step is train_mod._micro_step  # the training loop's own step is what is timed
    seen: dict[int, list[tuple[bool, frozenset[float]]]] = {}

    def watched(model, *args, **kwargs):
        seen.setdefault(id(model), []).append((model.training, _dropout_rates(model)))
        return train_mod._micro_step(model, *args, **kwargs)

    monkeypatch.setattr(step_time, "_micro_step", watched)
    model = make_tiny_qa_model(tmp_path / "m")  # BERT's default rates: 0.1 hidden and attention dropout
    args = ["--model", str(model), "--data", str(toy_train), "--sparsity", "0.5", "--batch-size", "4"]
    step_time.main([*args, "--steps", "2", "--rounds", "2", "--profile"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["seconds_per_step"]) == {"model's", "0.0"} and all(v > 0 for v in out["seconds_per_step"].values())
    # One model per setting, each stepped in training mode 3 (burn-in) + 2 x 2 (rounds) + 2 (profiled) times, one
    # at the model's own dropout everywhere, the other with every dropout at 0.
    assert sorted(len(calls) for calls in seen.values()) == [9, 9]
    assert all(len(set(calls)) == 1 for calls in seen.values())
    assert {calls[0] for calls in seen.values()} == {(True, frozenset({0.1})), (True, frozenset({0.0}))}
    # The profile: each setting's costliest operators (at most six), as shares of that setting's own time.
    assert set(out["cpu_share"]) == {"model's", "0.0"}
    for shares in out["cpu_share"].values():
        assert 1 <= len(shares) <= 6 and all(isinstance(op, str) and op for op in shares)
        assert all(0 <= v <= 1 for v in shares.values()) and 0 < sum(shares.values()) <= 1.01


def test_finetuning_a_pretrained_encoder_without_teacher(tmp_path, toy_train, toy_squad):
    encoder = make_tiny_qa_model(tmp_path / "encoder", qa_head=False)
    block = f"""\
    student: {{pretrained: {encoder}}}
    train: {{data: TRAIN, batch_size: 8, precision: fp32, eval_limit: 3, checkpoint_every: 50, log_every: 1,
             dropout: 0.0}}
    stages:
      - {{loss: {{hard: 1.0}}, epochs: 6, lr: 3.0e-3}}
    """
    root = run_recipe(_recipe(tmp_path, encoder, toy_train, toy_squad, block), tmp_path / "r")
    folder = root / "models" / "student"
    saved = load_torch_qa_model(folder)  # the new QA head is trained and saved
    assert saved.config.hidden_dropout_prob == 0.1  # trained without dropout, saved with the model's own rates
    losses = [e["hard"] for e in map(json.loads, (folder / "train_log.jsonl").read_text().splitlines()) if "hard" in e]
    assert losses[-1] < 0.5 * losses[0]
    assert json.loads((folder / "training.json").read_text())["teacher"] is None


def test_tinybert_two_stage_with_projection_and_attention(tmp_path, toy_train, toy_squad):
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=4, hidden=32, heads=4)
    block = """\
    student: {num_hidden_layers: 2, hidden_size: 16, num_attention_heads: 4, intermediate_size: 32, init: random}
    train: {data: TRAIN, batch_size: 8, precision: fp32, eval_limit: 3, checkpoint_every: 50, log_every: 1}
    stages:
      - {loss: {hidden: 1.0, attention: 1.0, embedding: 1.0}, epochs: 4, lr: 3.0e-3}
      - {loss: {soft: 1.0}, epochs: 1, lr: 1.0e-3}
    """
    root = run_recipe(_recipe(tmp_path, teacher, toy_train, toy_squad, block), tmp_path / "r")
    entries = [json.loads(x) for x in (root / "models" / "student" / "train_log.jsonl").read_text().splitlines()]
    first = [e for e in entries if e.get("stage") == 0 and "loss" in e]
    assert {"hidden", "attention", "embedding"} <= set(first[0])
    assert first[-1]["loss"] < first[0]["loss"]
    assert any(e.get("stage") == 1 and "soft" in e for e in entries)
    assert load_torch_qa_model(root / "models" / "student").config.hidden_size == 16


# --- refusals before training --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "student, loss, message",
    [
        ("{layers: [0, 7]}", "{hard: 1.0}", "do not exist"),
        ("{num_hidden_layers: 6}", "{hard: 1.0}", "only 4 to initialise"),
        ("{hidden_size: 30, num_attention_heads: 4, num_hidden_layers: 2}", "{hard: 1.0}", "not divisible"),
        ("{layers: [0, 2]}", "{hidden: 1.0, layer_map: {0: 1, 2: 3}}", "student layer 2"),
        ("{layers: [0, 2]}", "{hidden: 1.0, layer_map: {0: 1, 1: 8}}", "teacher layer 8"),
        ("{num_hidden_layers: 2, num_attention_heads: 2}", "{attention: 1.0}", "as many heads"),
    ],
)
def test_bad_distill_specs_fail_with_file_and_line_before_training(
    tmp_path, toy_train, toy_squad, capsys, student, loss, message
):
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=4)
    block = f"student: {student}\ntrain: {{data: TRAIN}}\nstages:\n  - {{loss: {loss}}}\n"
    path = _recipe(tmp_path, teacher, toy_train, toy_squad, block)
    assert main(["distill", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert message in err and f"{path}:6" in err
    assert not (tmp_path / "runs" / "d" / "work").exists()


def test_teacher_without_qa_head_is_refused(tmp_path, toy_train, toy_squad, capsys):
    encoder = make_tiny_qa_model(tmp_path / "encoder", qa_head=False)
    path = _recipe(tmp_path, encoder, toy_train, toy_squad, "student: {layers: [0]}\ntrain: {data: TRAIN}\n")
    assert main(["distill", str(path), "--out", str(tmp_path / "runs")]) == 2
    assert "not a question-answering model" in capsys.readouterr().err


def test_cache_of_other_tokenisation_is_refused_before_training(tmp_path, toy_train, toy_squad, capsys):
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2)
    cache = tmp_path / "my-cache"
    block = """\
    student: {layers: [0]}
    train: {data: TRAIN, batch_size: 8, precision: fp32, max_length: MAXLEN, doc_stride: 8, cache: CACHE,
            checkpoint_every: 50}
    stages:
      - {loss: {soft: 1.0}, max_steps: 1}
    """.replace("CACHE", str(cache))
    first = _recipe(tmp_path, teacher, toy_train, toy_squad, block.replace("MAXLEN", "64"), name="a")
    run_recipe(first, tmp_path / "runs")
    assert (cache / "meta.json").exists()
    second = _recipe(tmp_path, teacher, toy_train, toy_squad, block.replace("MAXLEN", "32"), name="b")
    assert main(["distill", str(second), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "teacher cache was built with other settings" in err and "max_length" in err
    assert not (tmp_path / "runs" / "b" / "work" / "student" / "checkpoint.pt").exists()


# --- on the shared teacher and data --------------------------------------------------------------------------------


def test_distilled_student_of_the_shared_teacher_learns(tmp_path, teacher):
    from conftest import DEV
    from edgeqa.compress.train import _evaluate

    block = """\
    student: {layers: [0, 2, 4]}
    train: {data: TRAIN, limit: 320, batch_size: 16, eval_limit: 100, checkpoint_every: 50,
            freeze_word_embeddings: true}
    stages:
      - {loss: {hard: 0.5, soft: 0.5, temperature: 2.0}, max_steps: 20, lr: 2.0e-4}
    """
    root = run_recipe(_recipe(tmp_path, teacher, TRAIN, DEV, block), tmp_path / "runs")
    info = json.loads((root / "models" / "student" / "training.json").read_text())
    untrained = build_student(StudentSpec(layers=(0, 2, 4)), load_torch_qa_model(teacher))
    before = _evaluate(
        untrained,
        load_tokenizer(teacher),
        load_squad(DEV, 100).examples,
        ("input_ids", "attention_mask", "token_type_ids"),
        train_mod.TrainConfig(data=str(TRAIN)),
    )
    assert info["best"]["f1"] > before["f1"] + 10, (before, info["best"])
    assert info["parameters"] < 0.8 * sum(p.numel() for p in load_torch_qa_model(teacher).parameters())


def test_finetuning_the_packaged_minilm_encoder(tmp_path, teacher):
    from edgeqa.compress.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "finetune-minilm-cpu.yaml")
    encoder = recipe.steps[0].params["student"]["pretrained"]
    assert Path(encoder, "model.safetensors").exists()
    block = f"""\
    student: {{pretrained: {encoder}}}
    train: {{data: TRAIN, limit: 32, batch_size: 16, eval_limit: 10, checkpoint_every: 50}}
    stages:
      - {{loss: {{hard: 1.0}}, max_steps: 2}}
    """
    from conftest import DEV

    root = run_recipe(_recipe(tmp_path, teacher, TRAIN, DEV, block), tmp_path / "runs")
    student = load_torch_qa_model(root / "models" / "student")  # a QA model now, with its own head
    assert student.config.num_hidden_layers == 6 and (root / "models" / "student" / "tokenizer.json").exists()


# --- the GPU check's two halves, on the CPU ------------------------------------------------------------------------


def test_gpu_check_prepares_what_travels_and_its_device_half_runs(tmp_path):
    from edgeqa.compress import gpu_check

    shared = tmp_path / "shared"
    make_tiny_qa_model(shared / gpu_check.TEACHER, layers=6)  # the recipe's student copies layers 0, 2, 4
    (shared / gpu_check.DEV).parent.mkdir(parents=True)
    write_squad(shared / gpu_check.TRAIN, TOY_QAS * 16, gz=True)
    write_squad(shared / gpu_check.DEV, TOY_QAS, gz=True)
    manifest = gpu_check.prepare(shared, tmp_path / ".gpu")
    weights = load_file(tmp_path / ".gpu" / "teacher" / "model.safetensors")
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    assert {"train.json.gz", "dev.json.gz", "teacher/vocab.txt", "teacher/config.json"} <= set(manifest["files"])

    result = gpu_check.run_check(
        tmp_path / ".gpu", tmp_path / "out", steps=(2, 3), limit=40, eval_questions=3, allow_cpu=True
    )
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text()) == result
    assert result["status"] == "done" and result["training"]["device"] == "cpu"
    assert [s["steps"] for s in result["stages"]] == [2, 3] and all(s["steps_per_s"] > 0 for s in result["stages"])
    assert result["eval_questions"] == 3 and 0 <= result["f1"] <= 100
    assert result["f1"] == result["in_training_eval"]["f1"]  # the saved student scores as it did in training
    assert result["training"]["precision"]["asked"] == "auto"
