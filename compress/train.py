"""The distillation (and fine-tuning) loop: one readable function, `distill`, from a config to a student folder.

It runs as one process, or data-parallel under `torchrun` / `accelerate launch` (DistributedDataParallel, gloo on
CPU, nccl on GPUs): each optimiser step takes one global batch of `batch_size` windows, split over the processes
and then into micro-batches (gradient accumulation), so the same recipe means the same updates on any launcher.

Everything needed to continue is saved every `checkpoint_every` steps (weights, optimiser, scheduler, RNG, stage
and step); batch order is a function of (seed, stage, epoch), so a run killed anywhere and started again with the
same command ends with the same weights as one that never stopped (same hardware and thread count).

On CUDA everything runs on the device: the teacher's logit cache, both models' passes and the dev-subset
evaluations. DataLoader workers pad each step's batches ahead into pinned memory, and loss terms are read back only
on logging steps, so the loop never waits for the device between steps. On CPU the same batches are padded in the
training process, and the numbers are those of a loop without a loader.

This module sets a run up and finishes it; the rest reads in this order: `train_config` (what a call is given),
`devices` (processes, device, precision), `forward` (the passes the losses need), `train_loop` (a stage, step by
step, with its logging and checkpoints) and `train_eval` (the dev-subset score).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeqa.bench.cpu import this_cpu
from edgeqa.bench.engines import load_tokenizer, load_torch_qa_model
from edgeqa.bench.files import EdgeQAError, write_json
from edgeqa.bench.squad import load_squad
from edgeqa.compress.checkpoint import load_checkpoint
from edgeqa.compress.devices import Dist, barrier, precision_for, setup_distributed
from edgeqa.compress.forward import ScoreTaps, Trainee, set_dropout, teacher_fn
from edgeqa.compress.student import build_student, check_layer_map, default_layer_map, student_config
from edgeqa.compress.train_config import DistillConfig, Hooks, Stage
from edgeqa.compress.train_loop import Distillation, run_stage, save_model, write_log
from edgeqa.compress.trainset import build_cache, cache_folder, cache_key, check_cache, load_trainset

log = logging.getLogger(__name__)


def _steps(stage: Stage, windows: int, batch_size: int) -> int:
    per_epoch = windows // batch_size
    if per_epoch == 0:
        raise EdgeQAError(f"train.batch_size {batch_size} is larger than the {windows} training windows")
    return stage.max_steps or max(1, round(stage.epochs * per_epoch))


def check_student(cfg: DistillConfig, teacher_config) -> tuple[Any, list[dict[int, int]]]:
    """The student's config and each stage's layer map, validated against the teacher's config alone."""
    s_cfg = student_config(cfg.student, teacher_config)
    maps = []
    for i, stage in enumerate(cfg.stages):
        layer_map: dict[int, int] = {}
        if stage.loss.intermediate:
            if teacher_config is None:
                raise EdgeQAError(f"stage {i}: intermediate-layer transfer needs a teacher")
            n_t = teacher_config.num_hidden_layers
            layer_map = stage.loss.layer_map or default_layer_map(s_cfg.num_hidden_layers, n_t)
            check_layer_map(layer_map, s_cfg.num_hidden_layers, n_t, f"stage {i} layer_map")
            if stage.loss.attention and s_cfg.num_attention_heads != teacher_config.num_attention_heads:
                raise EdgeQAError(
                    f"stage {i}: attention transfer needs as many heads in the student "
                    f"({s_cfg.num_attention_heads}) as in the teacher ({teacher_config.num_attention_heads})"
                )
        maps.append(layer_map)
    return s_cfg, maps


def check_plan(cfg: DistillConfig, teacher_dir: Path | None) -> tuple[Any, Any, Any, list[dict[int, int]]]:
    """Load the teacher (refusing one without a QA head) and validate the student, before any data or training."""
    if cfg.needs_teacher and teacher_dir is None:
        raise EdgeQAError("these losses or this student need a teacher, and none was given")
    teacher = load_torch_qa_model(teacher_dir) if cfg.needs_teacher else None
    tokenizer = load_tokenizer(Path(cfg.student.pretrained) if cfg.student.pretrained else teacher_dir)
    s_cfg, maps = check_student(cfg, teacher.config if teacher is not None else None)
    return teacher, tokenizer, s_cfg, maps


def distill(
    cfg: DistillConfig,
    teacher_dir: Path | None,
    work: Path,
    eval_data: str | None = None,
    cache_root: Path | None = None,
    progress: bool = True,
    hooks: Hooks | None = None,
) -> Path:
    """Train the student; returns the folder of the best (or, without evaluation, the last) student."""
    hooks = hooks or Hooks()
    record = {**cfg.to_dict(), "hooks": hooks.fingerprint}  # what a checkpoint must have been made with
    t_begin = time.perf_counter()
    dist = setup_distributed()
    teacher, tokenizer, s_cfg, layer_maps = check_plan(cfg, teacher_dir)
    tc = cfg.train
    precision = precision_for(tc.precision, dist.device)
    if dist.main:
        log.info("training in %s on %s (%s)", precision.chosen, dist.device, precision.reason)
    if tc.batch_size % dist.world:
        raise EdgeQAError(f"train.batch_size {tc.batch_size} does not split over {dist.world} processes")
    trainset = load_trainset(tc.data, tc.limit, tokenizer, tc.qa)
    steps = [_steps(s, len(trainset), tc.batch_size) for s in cfg.stages]
    checkpoint = work / "checkpoint.pt"
    state = load_checkpoint(checkpoint, record) if checkpoint.exists() else None
    if teacher is not None:  # before the logit cache: every teacher pass runs on the training device
        teacher.to(dist.device).eval()
    logits = _teacher_logits(
        cfg, teacher, teacher_dir, trainset, tokenizer, dist, precision, work, cache_root, progress
    )
    trainee, teacher_taps = _build_trainee(cfg, teacher, s_cfg, layer_maps, trainset, hooks, dist.device)
    work.mkdir(parents=True, exist_ok=True)
    run = Distillation(
        cfg=cfg,
        dist=dist,
        precision=precision,
        hooks=hooks,
        trainee=trainee,
        teacher=teacher,
        teacher_taps=teacher_taps,
        tokenizer=tokenizer,
        trainset=trainset,
        logits=logits,
        layer_maps=layer_maps,
        steps=steps,
        work=work,
        record=record,
        t_begin=t_begin - (state["seconds"] if state else 0.0),  # a resumed run counts its earlier time
        progress=progress,
        evaluating=bool(eval_data),
        eval_examples=load_squad(eval_data, tc.eval_limit).examples if eval_data and dist.main else None,
    )
    if state:
        run.history, run.best = state["history"], state["best"]
        run.starts = state.get("starts", [])
    start_stage, start_step = (state["stage"], state["step"]) if state else (0, 0)
    run.starts.append({"stage": start_stage, "step": start_step, "steps_run": 0})
    for si in range(start_stage, len(cfg.stages)):
        first = si == start_stage
        run_stage(run, si, start_step if first else 0, state if first else None)
    _finish(run, teacher_dir)
    return work / "best"


def _teacher_logits(
    cfg: DistillConfig, teacher, teacher_dir, trainset, tokenizer, dist: Dist, precision, work, cache_root, progress
) -> np.ndarray | None:
    """Teacher logits for every window when a stage distils predictions from them: computed once by the first
    process (the others wait), kept on disk, read by every process."""
    if not any(s.loss.soft and not s.loss.intermediate for s in cfg.stages):
        return None
    tc = cfg.train
    key = cache_key(teacher_dir, trainset, tc.qa, precision.chosen)
    folder = Path(tc.cache) if tc.cache else cache_folder(cache_root or work / "cache", key)
    check_cache(folder, key)  # refuses a cache of other settings before any work
    logits = None
    if dist.main:
        run_teacher = teacher_fn(teacher, dist.device, precision.bf16)
        pad_id = tokenizer.pad_token_id or 0
        logits = build_cache(folder, key, trainset, run_teacher, pad_id, tc.teacher_batch_size, progress)
    barrier(dist)
    if not dist.main:
        logits = np.load(folder / "logits.npy", mmap_mode="r")
    return logits


def _build_trainee(
    cfg: DistillConfig, teacher, s_cfg, layer_maps, trainset, hooks: Hooks, device: str
) -> tuple[Trainee, ScoreTaps | None]:
    """The student (shaped by `hooks.prepare`, e.g. pruned) with its projection on the device, and the taps that
    read the teacher's attention scores when a stage transfers them."""
    tc = cfg.train
    student = build_student(cfg.student, teacher, tc.seed)
    if hooks.prepare:
        hooks.prepare(student, trainset)
    projection = None
    if any(s.loss.intermediate for s in cfg.stages) and s_cfg.hidden_size != teacher.config.hidden_size:
        torch.manual_seed(tc.seed)
        projection = torch.nn.Linear(s_cfg.hidden_size, teacher.config.hidden_size)
    if tc.dropout is not None:
        set_dropout(student, tc.dropout)
    if tc.freeze_word_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
    attention_maps = [m for m, st in zip(layer_maps, cfg.stages, strict=True) if st.loss.attention]
    trainee = Trainee(student, projection, sorted({s for m in attention_maps for s in m})).to(device)
    t_score_layers = sorted({t for m in attention_maps for t in m.values()})
    taps = ScoreTaps(teacher, t_score_layers) if teacher is not None and t_score_layers else None
    return trainee, taps


def _finish(run: Distillation, teacher_dir: Path | None) -> None:
    """The result (the last weights when nothing was evaluated), training.json and the log."""
    seconds = time.perf_counter() - run.t_begin
    dist = run.dist
    if dist.main:
        if run.best["step"] is None:  # no evaluation: the last weights are the result
            save_model(run.trainee.student, run.tokenizer, run.work / "best", run.hooks)
        summary = {
            "config": run.cfg.to_dict(),
            "teacher": str(teacher_dir) if teacher_dir else None,
            "best": run.best,
            "train_seconds": round(seconds, 1),
            "windows": len(run.trainset),
            "questions": run.trainset.questions,
            "steps": run.steps,
            "starts": run.starts,
            "processes": dist.world,
            "device": dist.device,
            "bf16": run.precision.bf16,
            "precision": run.precision.to_dict(),
            "parameters": sum(p.numel() for p in run.trainee.student.parameters()),
        }
        if dist.device.startswith("cuda"):
            summary["device_name"] = torch.cuda.get_device_name(dist.device)
        else:
            summary["cpu"] = this_cpu().to_dict()
        write_json(run.work / "training.json", summary)
        write_log(run.work, run.history)
    barrier(dist)
