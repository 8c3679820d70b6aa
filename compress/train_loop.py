"""The training loop proper: one stage from a given step to its end, step by step, with its logging, dev-subset
evaluations and checkpoints. `compress.train.distill` sets up the `Distillation` that every stage shares.

Batch order is a function of (seed, stage, epoch) and everything needed to continue is checkpointed every
`checkpoint_every` steps, so a run killed anywhere and started again ends with the weights of one that never
stopped. Loss terms stay on the device and are read back only on logging steps, so the loop never waits for it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edgeqa.bench.engines import model_input_names
from edgeqa.bench.files import atomic_dir, atomic_file
from edgeqa.compress.checkpoint import gather_rng, restore, save_checkpoint
from edgeqa.compress.devices import Dist, Precision, barrier
from edgeqa.compress.forward import ScoreTaps, Trainee, micro_step
from edgeqa.compress.student import save_student
from edgeqa.compress.train_config import DistillConfig, Hooks, TrainConfig
from edgeqa.compress.train_eval import score_student
from edgeqa.compress.trainset import StepBatches, StepSampler, TrainSet, as_is

log = logging.getLogger(__name__)

LOADER_WORKERS = 4  # per process on CUDA: padding and cache reads happen beside the step, not before it


@dataclass
class Distillation:
    """What every stage of one `distill` call shares: models, data, settings, and the record kept as it goes."""

    cfg: DistillConfig
    dist: Dist
    precision: Precision
    hooks: Hooks
    trainee: Trainee
    teacher: Any
    teacher_taps: ScoreTaps | None
    tokenizer: Any
    trainset: TrainSet
    logits: np.ndarray | None
    layer_maps: list[dict[int, int]]
    steps: list[int]
    work: Path
    record: dict[str, Any]
    t_begin: float
    progress: bool
    evaluating: bool
    eval_examples: list | None
    history: list[dict] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"f1": -1.0, "step": None})
    # One entry per start of this training: where it began and the optimiser steps it ran (for a start that was
    # killed, up to its last checkpoint). training.json keeps them as `starts`: a resumed run shows each restart.
    starts: list[dict] = field(default_factory=list)

    @property
    def tc(self) -> TrainConfig:
        return self.cfg.train

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return model_input_names(self.trainee.student)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0


def run_stage(run: Distillation, si: int, step: int, state: dict | None) -> None:
    """Train stage `si` from `step` to its end (a resumed run restores weights, optimiser and RNG from `state`)."""
    stage, total, tc, dist, hooks = run.cfg.stages[si], run.steps[si], run.tc, run.dist, run.hooks
    predicting = bool(stage.loss.hard or stage.loss.soft)
    optimizer = make_optimizer(run.trainee, stage.lr, tc.weight_decay)
    scheduler = make_scheduler(optimizer, total, stage.warmup)
    torch.manual_seed(tc.seed * 1000 + si * 10 + dist.rank)  # dropout masks: per stage and process
    if hooks.start_stage:
        hooks.start_stage(run.trainee.student, optimizer, si, total)
    if state:
        restore(state, run.trainee, optimizer, scheduler, dist)
        if hooks.load_state and state.get("hooks") is not None:
            hooks.load_state(state["hooks"])
    model: torch.nn.Module = run.trainee
    if dist.world > 1:
        # The QA head idles in an intermediate-only stage, the projection in a predictions-only one.
        idle = not predicting or (run.trainee.projection is not None and not stage.loss.intermediate)
        model = torch.nn.parallel.DistributedDataParallel(run.trainee, find_unused_parameters=idle)
    model.train()
    bar = tqdm(
        total=total,
        initial=step,
        desc=f"stage {si + 1}/{len(run.cfg.stages)}",
        disable=not (run.progress and dist.main),
        mininterval=1 if sys.stderr.isatty() else 60,  # a log file gets a line a minute, not ten a second
    )
    meter = _Meter()
    for micro in _step_loader(run, si, step, total):
        if hooks.before_step:
            hooks.before_step(si, step)
        logging_step = (step + 1) % tc.log_every == 0 or step + 1 == total
        kept, windows = _train_step(run, model, micro, si, keep_terms=logging_step)
        if tc.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for p in run.trainee.parameters() if p.requires_grad], tc.max_grad_norm)
        if hooks.before_optimizer:
            hooks.before_optimizer()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        run.starts[-1]["steps_run"] += 1
        if tc.record_windows:
            _record_windows(run, si, step, micro)
        if hooks.after_step:
            hooks.after_step(run.trainee.student, si, step, total)
        meter.windows += windows * dist.world
        bar.update(1)
        if logging_step:
            _log_step(run, bar, meter, si, step, scheduler.get_last_lr()[0], kept, windows)
        at_end = step == total
        if predicting and run.evaluating and ((tc.eval_every and step % tc.eval_every == 0) or at_end):
            _evaluate_and_keep(run, si, step, total)
            meter.reset()  # throughput counts training only
        if step % tc.checkpoint_every == 0 or at_end:
            _checkpoint(run, optimizer, scheduler, si, step)
    bar.close()
    if si + 1 < len(run.cfg.stages) and dist.main:  # the next stage starts from here after a restart
        _checkpoint(run, None, None, si + 1, 0, rngs=False)
    barrier(dist)


class _Meter:
    """Training windows since the last log line, and when that was: the windows-per-second figure."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.windows, self.since = 0, time.perf_counter()

    def rate(self) -> float:
        return self.windows / max(time.perf_counter() - self.since, 1e-9)


def _step_loader(run: Distillation, si: int, start: int, total: int) -> torch.utils.data.DataLoader:
    """Each step's micro-batches from `start` on, in the order of `epoch_batches` (so a resumed run continues
    where it stopped). On CUDA, worker processes pad and read cached logits ahead of the step, into pinned memory
    that is copied to the device without waiting; on CPU the main process does it (workers would only compete
    with the step for the cores)."""
    tc, dist, stage = run.tc, run.dist, run.cfg.stages[si]
    cuda = dist.device.startswith("cuda")
    cached = run.logits if stage.loss.soft and not stage.loss.intermediate else None
    sampler = StepSampler(
        run.trainset.lengths, tc.batch_size, tc.seed, si, start, total, dist.rank, dist.world, tc.micro_batch_size
    )
    workers = LOADER_WORKERS if cuda else 0
    if workers:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers never tokenise
    return torch.utils.data.DataLoader(
        StepBatches(run.trainset, run.pad_id, cached),
        sampler=sampler,
        batch_size=None,  # the sampler gives whole steps
        collate_fn=as_is,
        num_workers=workers,
        pin_memory=cuda,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator(),  # the loader draws its seed from here, not from the RNG of dropout masks
    )


def _train_step(run: Distillation, model, micro: list[dict], si: int, keep_terms: bool) -> tuple[dict[str, list], int]:
    """Forward and backward over one step's micro-batches; gradients are complete when it returns. The loss terms
    stay on the device (detached) and only on logging steps: reading them back each micro-step would make every
    step wait for the device."""
    stage, dist = run.cfg.stages[si], run.dist
    kept: dict[str, list[torch.Tensor]] = {}
    for c, batch in enumerate(micro):
        sync = c == len(micro) - 1 or dist.world == 1
        with model.no_sync() if not sync else contextlib.nullcontext():
            terms = micro_step(
                model,
                run.teacher,
                run.teacher_taps,
                batch,
                run.names,
                stage.loss,
                run.layer_maps[si],
                dist.device,
                run.precision.bf16,
            )
            # Sum over examples / global batch, times world because DDP averages gradients over processes.
            (terms["loss"] * dist.world / run.tc.batch_size).backward()
        if keep_terms:
            for k, v in terms.items():
                kept.setdefault(k, []).append(v.detach())
    return kept, sum(len(b["labels"]) for b in micro)


def _log_step(run: Distillation, bar, meter: _Meter, si: int, step: int, lr: float, kept: dict, windows: int) -> None:
    rate = meter.rate()
    # Summed per micro-batch in order, as Python floats: the same figures a step that read each term at once gave.
    terms = {k: sum(float(v) / windows for v in values) for k, values in kept.items()}
    entry = {"stage": si, "step": step, "lr": lr, "windows_per_s": round(rate, 2)}
    entry.update({k: round(v, 5) for k, v in terms.items()})
    run.history.append(entry)
    bar.set_postfix(loss=f"{terms['loss']:.3f}", win_s=f"{rate:.1f}")
    meter.reset()


def _evaluate_and_keep(run: Distillation, si: int, step: int, total: int) -> None:
    """Score the dev subset (first process only) and keep the student when it is the best allowed so far."""
    if run.dist.main:
        metrics = score_student(
            run.trainee.student, run.tokenizer, run.eval_examples, run.names, run.tc, run.dist.device
        )
        run.history.append({"stage": si, "step": step, "eval": metrics})
        log.info("stage %d step %d: dev-subset EM %.2f F1 %.2f", si, step, metrics["exact"], metrics["f1"])
        eligible = run.hooks.may_keep is None or run.hooks.may_keep(si, step, total)
        if eligible and metrics["f1"] > run.best["f1"]:
            run.best = {"f1": metrics["f1"], "exact": metrics["exact"], "stage": si, "step": step}
            save_model(run.trainee.student, run.tokenizer, run.work / "best", run.hooks)
        run.trainee.train()
    barrier(run.dist)


def _checkpoint(run: Distillation, optimizer, scheduler, si: int, step: int, rngs: bool = True) -> None:
    """Everything needed to continue from here; without `rngs` (a stage boundary, first process only) the next
    stage starts with fresh RNG, optimiser and schedule."""
    seconds = time.perf_counter() - run.t_begin
    states = gather_rng(run.dist) if rngs else None
    if run.dist.main:
        extra = run.hooks.state() if run.hooks.state and rngs else None
        save_checkpoint(
            run.work / "checkpoint.pt",
            run.record,
            run.trainee,
            optimizer,
            scheduler,
            si,
            step,
            run.best,
            run.history,
            run.starts,
            seconds,
            states,
            extra,
        )
        if rngs:
            write_log(run.work, run.history)
    if rngs:
        barrier(run.dist)


def make_optimizer(trainee: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in trainee.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def make_scheduler(optimizer, total: int, warmup: float):
    warm = max(1, int(total * warmup)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_model(student, tokenizer, folder: Path, hooks: Hooks) -> None:
    with atomic_dir(folder) as tmp:
        save_student(hooks.to_save(student) if hooks.to_save else student, tokenizer, tmp)


def _record_windows(run: Distillation, si: int, step: int, micro: list[dict]) -> None:
    windows = sorted(int(i) for batch in micro for i in batch["windows"])
    with open(run.work / f"windows-{run.dist.rank}.jsonl", "a") as f:
        f.write(json.dumps({"stage": si, "step": step, "windows": windows}) + "\n")


def write_log(work: Path, history: list[dict]) -> None:
    with atomic_file(work / "train_log.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")
