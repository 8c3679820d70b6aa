"""The training loop in process, against what its settings say by hand: when hooks run and with what, which steps
log, evaluate and checkpoint, the learning rate each log line shows, the per-window loss it logs, what the result
and training.json hold; its pieces are in test_train_pieces.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_qa_model
from edgeqa.bench.engines import load_tokenizer, load_torch_qa_model
from edgeqa.bench.qa import QAConfig
from edgeqa.compress import train, train_loop
from edgeqa.compress.train_config import DistillConfig, Hooks
from edgeqa.compress.trainset import epoch_batches, load_trainset


def _cfg(train_file: Path, stages: list[dict], **train_settings) -> DistillConfig:
    settings = {"data": str(train_file), "batch_size": 8, "precision": "fp32", **train_settings}
    return DistillConfig.from_dict({"student": {"layers": [0, 1]}, "train": settings, "stages": stages})


class _Recorder:
    """Hooks that write down every call, and the loop's checkpoints and loss terms beside them."""

    def __init__(self, keep_from_stage: int) -> None:
        self.calls: list[tuple] = []
        self.asked: list[tuple] = []  # may_keep's questions
        self.keep_from_stage = keep_from_stage

    def hooks(self) -> Hooks:
        return Hooks(
            start_stage=lambda student, opt, si, total: self.calls.append(("start", si, total, type(opt).__name__)),
            before_step=lambda si, step: self.calls.append(("before", si, step)),
            before_optimizer=lambda: self.calls.append(("optimizer",)),
            after_step=self._after_step,
            to_save=self._to_save,
            may_keep=self._may_keep,
            state=lambda: {"calls": len(self.calls)},
            load_state=lambda s: self.calls.append(("load", s)),
            fingerprint={"recorder": 1},
        )

    def _after_step(self, student, si: int, step: int, total: int) -> None:
        assert isinstance(student, torch.nn.Module)  # the model being trained, which pruning's hooks change
        self.calls.append(("after", si, step, total))

    def _may_keep(self, si: int, step: int, total: int) -> bool:
        self.asked.append((si, step, total))
        return si >= self.keep_from_stage

    def _to_save(self, student):
        self.calls.append(("save",))
        return student


def test_hooks_logs_evaluations_and_checkpoints_fall_on_the_steps_the_settings_name(
    tmp_path, toy_train, toy_squad, monkeypatch
):
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2)
    stages = [
        {"loss": {"hard": 1.0}, "max_steps": 5, "lr": 1.0e-3},  # warm-up: max(1, int(0.5)) = 1 step
        {"loss": {"soft": 1.0, "temperature": 2.0}, "max_steps": 3, "lr": 2.0e-3},
    ]
    cfg = _cfg(toy_train, stages, log_every=2, eval_every=3, checkpoint_every=2, eval_limit=2, seed=7)
    recorder = _Recorder(keep_from_stage=1)
    saved, losses = [], []
    real_save, real_step = train_loop.save_checkpoint, train_loop.micro_step

    def save(path, record, trainee, optimizer, scheduler, stage, step, best, history, starts, seconds, rngs, extra):
        saved.append((stage, step, optimizer is None, rngs is None, extra, record["hooks"]))
        real_save(path, record, trainee, optimizer, scheduler, stage, step, best, history, starts, seconds, rngs, extra)

    def step(*args, **kwargs):
        terms = real_step(*args, **kwargs)
        losses.append({k: float(v.detach()) for k, v in terms.items()})
        return terms

    seeds, real_seed = [], torch.manual_seed
    monkeypatch.setattr(train_loop.torch, "manual_seed", lambda s: seeds.append(s) or real_seed(s))
    monkeypatch.setattr(train_loop, "save_checkpoint", save)
    monkeypatch.setattr(train_loop, "micro_step", step)
    work = tmp_path / "work"
    best = train.distill(cfg, teacher, work, str(toy_squad), tmp_path / "cache", False, recorder.hooks())
    assert best == work / "best"

    # Hooks: each stage starts with a fresh AdamW, then per step: before (at the step's index), the optimiser
    # hook, after (at the steps done); the result is saved through `to_save` at stage 2's evaluation only.
    expected: list[tuple] = []
    for si, total in ((0, 5), (1, 3)):
        expected.append(("start", si, total, "AdamW"))
        for s in range(total):
            expected += [("before", si, s), ("optimizer",), ("after", si, s + 1, total)]
            if (si, s + 1) == (1, 3):
                expected.append(("save",))
    assert recorder.calls == expected

    assert recorder.asked == [(0, 3, 5), (0, 5, 5), (1, 3, 3)]  # at each evaluation: may this one be kept?
    assert seeds[-2:] == [7 * 1000 + 0 * 10, 7 * 1000 + 1 * 10]  # dropout masks: seed x 1000 + stage x 10 + rank

    # Checkpoints every 2 steps and at each stage's end, with the hooks' state; between the stages one without
    # optimiser or RNG (the next stage starts afresh). The record carries the hooks' fingerprint.
    calls_at = {2: 7, 4: 13, 5: 16}  # recorder calls made when stage 0's checkpoints are written
    assert saved == [
        *((0, s, False, False, {"calls": calls_at[s]}, {"recorder": 1}) for s in (2, 4, 5)),
        (1, 0, True, True, None, {"recorder": 1}),
        (1, 2, False, False, {"calls": 23}, {"recorder": 1}),
        (1, 3, False, False, {"calls": 27}, {"recorder": 1}),
    ]

    # The log: a line every 2 steps and at each stage's end, an evaluation every 3 steps and at the end of a
    # predicting stage; the learning rate after the step's update: lr x (total - step) / (total - warm-up).
    history = [json.loads(x) for x in (work / "train_log.jsonl").read_text().splitlines()]
    shape = [(h["stage"], h["step"], "eval" in h) for h in history]
    assert shape == [(0, 2, False), (0, 3, True), (0, 4, False), (0, 5, False), (0, 5, True),
                     (1, 2, False), (1, 3, False), (1, 3, True)]  # fmt: skip
    lines = [h for h in history if "eval" not in h]
    assert [h["lr"] for h in lines] == pytest.approx([1e-3 * 3 / 4, 1e-3 * 1 / 4, 0.0, 2e-3 * 1 / 2, 0.0])
    assert [sorted(h) for h in lines] == [sorted(["stage", "step", "lr", "windows_per_s", "hard", "loss"])] * 3 + [
        sorted(["stage", "step", "lr", "windows_per_s", "soft", "loss"])
    ] * 2
    # Each line's terms are its step's, per window (one micro-batch of 8 windows per step, 8 steps in all).
    assert len(losses) == 8
    for h in lines:
        i = (5 if h["stage"] else 0) + h["step"] - 1
        term = "soft" if h["stage"] else "hard"
        assert h["loss"] == pytest.approx(round(losses[i]["loss"] / 8, 5), abs=1e-5)
        assert h[term] == pytest.approx(round(losses[i][term] / 8, 5), abs=1e-5)
        assert h["windows_per_s"] > 0

    # The result: stage 2's model (stage 1 may not be kept), scored on the first 2 of the 3 dev questions.
    evals = [h for h in history if "eval" in h]
    assert all(e["eval"]["questions"] == 2 for e in evals)
    info = json.loads((work / "training.json").read_text())
    assert info["best"] == {"f1": evals[-1]["eval"]["f1"], "exact": evals[-1]["eval"]["exact"], "stage": 1, "step": 3}
    student = load_torch_qa_model(work / "best")
    assert info["parameters"] == sum(p.numel() for p in student.parameters())
    assert (info["steps"], info["windows"], info["questions"], info["processes"]) == ([5, 3], 48, 48, 1)
    assert info["starts"] == [{"stage": 0, "step": 0, "steps_run": 8}]
    assert (info["device"], info["bf16"], info["teacher"]) == ("cpu", False, str(teacher))
    assert info["precision"] == {"asked": "fp32", "chosen": "fp32", "reason": "given: fp32"}
    assert info["config"] == cfg.to_dict() and set(info["cpu"]) >= {"isa", "flags"}
    assert (work / "checkpoint.pt").exists() and not list(work.glob("*.tmp*"))


def test_a_stage_kept_from_the_first_evaluation_on_keeps_only_a_better_score(
    tmp_path, toy_train, toy_squad, monkeypatch
):
    """The best is kept when its F1 is strictly higher: scores 10, 30, 30, 20 keep the second."""
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2)
    scores = iter([10.0, 30.0, 30.0, 20.0])
    saved = []

    def score(student, tokenizer, examples, names, tc, device):
        return {"exact": 1.0, "f1": next(scores), "questions": len(examples)}

    monkeypatch.setattr(train_loop, "score_student", score)
    monkeypatch.setattr(train_loop, "save_model", lambda student, tok, folder, hooks: saved.append(folder))
    cfg = _cfg(toy_train, [{"loss": {"hard": 1.0}, "max_steps": 4}], eval_every=1, eval_limit=2)
    train.distill(cfg, teacher, tmp_path / "work", str(toy_squad), progress=False)
    info = json.loads((tmp_path / "work" / "training.json").read_text())
    assert info["best"] == {"f1": 30.0, "exact": 1.0, "stage": 0, "step": 2}
    assert saved == [tmp_path / "work" / "best"] * 2  # at steps 1 and 2 only


def test_without_evaluation_the_last_weights_are_the_result_and_the_windows_are_recorded(tmp_path, toy_train):
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2)
    cfg = _cfg(toy_train, [{"loss": {"hard": 1.0}, "max_steps": 3}], record_windows=True, seed=5)
    work = tmp_path / "work"
    train.distill(cfg, teacher, work, None, progress=False)
    info = json.loads((work / "training.json").read_text())
    assert info["best"] == {"f1": -1.0, "step": None}
    assert not any("eval" in json.loads(x) for x in (work / "train_log.jsonl").read_text().splitlines())
    checkpoint = torch.load(work / "checkpoint.pt", weights_only=False)
    saved = load_torch_qa_model(work / "best").state_dict()
    weights = {k.removeprefix("student."): v for k, v in checkpoint["model"].items()}
    assert all(torch.equal(saved[k], weights[k]) for k in saved)  # the weights of the last step
    # Every step's windows, sorted, as the epoch order of seed 5, stage 0 gives them.
    lines = [json.loads(x) for x in (work / "windows-0.jsonl").read_text().splitlines()]
    lengths = load_trainset(toy_train, None, load_tokenizer(teacher), QAConfig()).lengths
    order = epoch_batches(lengths, 8, 5, 0, 0)
    assert [(x["stage"], x["step"]) for x in lines] == [(0, 1), (0, 2), (0, 3)]
    assert [x["windows"] for x in lines] == [sorted(int(i) for i in order[k]) for k in range(3)]


def test_clipping_bounds_the_gradient_norm_of_the_trained_weights(tmp_path, toy_train, monkeypatch):
    """max_grad_norm clips the gradients of the weights that train, before the optimiser sees them."""
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2)
    norms = []

    def before_optimizer():
        grads = [p.grad for p in trainee_params() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    seen = {}

    def start(student, optimizer, si, total):
        seen["student"] = student

    def trainee_params():
        return [p for p in seen["student"].parameters() if p.requires_grad]

    hooks = Hooks(start_stage=start, before_optimizer=before_optimizer)
    for clip in (1e-3, 1e3):
        cfg = _cfg(toy_train, [{"loss": {"hard": 1.0}, "max_steps": 2}], max_grad_norm=clip)
        train.distill(cfg, teacher, tmp_path / f"w{clip}", None, progress=False, hooks=hooks)
    assert all(n == pytest.approx(1e-3, rel=1e-4) for n in norms[:2])  # clipped to the norm asked
    assert all(n > 1e-2 for n in norms[2:])  # a tiny random model's gradients are far above 1e-3: left alone
    assert math.isfinite(sum(norms))


def test_each_step_is_cut_into_its_micro_batches_and_logs_fall_every_log_every_steps(tmp_path, toy_train, monkeypatch):
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2)
    sizes, real = [], train_loop.micro_step

    def step(model, teacher, taps, batch, *args):
        sizes.append(len(batch["labels"]))
        return real(model, teacher, taps, batch, *args)

    monkeypatch.setattr(train_loop, "micro_step", step)
    cfg = _cfg(toy_train, [{"loss": {"hard": 1.0}, "max_steps": 7}], micro_batch_size=3, log_every=3, limit=20)
    train.distill(cfg, teacher, tmp_path / "w", None, progress=False)
    assert sizes == [3, 3, 2] * 7  # 8 windows a step, in passes of 3, 3 and 2
    info = json.loads((tmp_path / "w" / "training.json").read_text())
    assert (info["questions"], info["windows"]) == (20, 20)  # the first 20 questions, one window each
    assert not (tmp_path / "w" / "cache").exists()  # no soft loss: no teacher logits computed
    history = [json.loads(x) for x in (tmp_path / "w" / "train_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [3, 6, 7]  # every third step, and the last


def test_a_resumed_run_hands_its_hooks_the_state_they_saved(tmp_path, toy_train, monkeypatch):
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2)
    stages = [{"loss": {"hard": 1.0}, "max_steps": 5}, {"loss": {"soft": 1.0}, "max_steps": 2}]
    cfg = _cfg(toy_train, stages, checkpoint_every=2)
    real, calls = train_loop.micro_step, {"n": 0}

    def dies_at_step_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # its checkpoint at step 2 is the last one
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_loop, "micro_step", dies_at_step_4)
    first = _Recorder(keep_from_stage=0)
    with pytest.raises(KeyboardInterrupt):
        train.distill(cfg, teacher, tmp_path / "w", None, progress=False, hooks=first.hooks())
    monkeypatch.setattr(train_loop, "micro_step", real)
    earlier = torch.load(tmp_path / "w" / "checkpoint.pt", weights_only=False)["seconds"]
    again = _Recorder(keep_from_stage=0)
    train.distill(cfg, teacher, tmp_path / "w", None, progress=False, hooks=again.hooks())
    # saved at step 2 after start, 2 x (before, optimizer, after): 7 calls; handed back before the first step, once
    assert again.calls[:2] == [("start", 0, 5, "AdamW"), ("load", {"calls": 7})]
    assert [c for c in again.calls if c[0] == "load"] == [("load", {"calls": 7})]
    # stage 1 resumes at step 2; stage 2 runs whole, from its start
    assert [c[1:] for c in again.calls if c[0] == "after"] == [(0, 3, 5), (0, 4, 5), (0, 5, 5), (1, 1, 2), (1, 2, 2)]
    info = json.loads((tmp_path / "w" / "training.json").read_text())
    assert info["starts"] == [{"stage": 0, "step": 0, "steps_run": 2}, {"stage": 0, "step": 2, "steps_run": 5}]
    assert info["train_seconds"] >= round(earlier, 1)  # the killed start's time counts
    assert len(list((tmp_path / "w" / "cache").glob("teacher-logits-*/logits.npy"))) == 1  # under the work folder


def test_hidden_state_transfer_reads_the_live_teacher_through_the_stages_layer_map(tmp_path, toy_train, toy_squad,
                                                                                   monkeypatch):  # fmt: skip
    """A student made of all its teacher's layers, without dropout, computes the teacher's hidden states: the
    transfer term is 0 at the first step only if the loop hands the teacher and the layer map to each step."""
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2, dropout=0.0)
    terms, real_step = [], train_loop.micro_step
    monkeypatch.setattr(train_loop, "micro_step", lambda *a, **k: terms.append(real_step(*a, **k)) or terms[-1])
    cfg = _cfg(toy_train, [{"loss": {"hidden": 1.0}, "max_steps": 2, "lr": 1.0e-3}], eval_limit=2)
    train.distill(cfg, teacher, tmp_path / "work", str(toy_squad), tmp_path / "cache", False)
    assert float(terms[0]["hidden"]) == pytest.approx(0.0, abs=1e-10) and len(terms) == 2
    assert float(terms[1]["hidden"]) > 0  # one step of AdamW later the student has moved off its teacher
