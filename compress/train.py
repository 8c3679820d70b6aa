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
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edgeqa.bench.cpu import CPU, this_cpu
from edgeqa.bench.engines import QAModel, default_threads, load_tokenizer, load_torch_qa_model, model_input_names
from edgeqa.bench.files import EdgeQAError, atomic_dir, atomic_file, check_field_types, known_fields, write_json
from edgeqa.bench.metric import score
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.squad import load_squad
from edgeqa.compress.checkpoint import gather_rng, load_checkpoint, restore, save_checkpoint
from edgeqa.compress.losses import LossConfig, distill_loss
from edgeqa.compress.student import (
    StudentSpec,
    build_student,
    check_layer_map,
    default_layer_map,
    save_student,
    student_config,
)
from edgeqa.compress.trainset import (
    StepBatches,
    StepSampler,
    TrainSet,
    as_is,
    build_cache,
    cache_folder,
    cache_key,
    check_cache,
    load_trainset,
)

log = logging.getLogger(__name__)

LOADER_WORKERS = 4  # per process on CUDA: padding and cache reads happen beside the step, not before it


@dataclass(frozen=True)
class Stage:
    """One phase of training with its own loss, length and learning-rate schedule (warm-up, then linear decay)."""

    loss: LossConfig
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    lr: float = 1e-4
    warmup: float = 0.1  # share of the stage's steps

    def __post_init__(self) -> None:
        check_field_types(self, "stage")
        if self.epochs <= 0 or (self.max_steps is not None and self.max_steps < 1):
            raise EdgeQAError(f"a stage needs epochs > 0 or max_steps >= 1, got {self.epochs} and {self.max_steps}")
        if self.lr <= 0:
            raise EdgeQAError(f"stage lr must be positive, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise EdgeQAError(f"stage warmup is a share of its steps, in [0, 1), got {self.warmup}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "loss": self.loss.to_dict()}


@dataclass(frozen=True)
class TrainConfig:
    data: str
    limit: int | None = None  # first N training questions
    max_length: int = 384
    doc_stride: int = 128
    batch_size: int = 32  # windows per optimiser step, over all processes
    micro_batch_size: int | None = None  # windows per forward pass in each process; default: its whole share
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    freeze_word_embeddings: bool = False
    precision: str = "auto"  # "bf16" autocast, "fp32", or "auto": bf16 where it is native (see choose_precision)
    # Dropout while training (hidden and attention); None keeps the model's. 0 cuts a CPU step by about 40%: no random
    # masks to draw, and attention runs in PyTorch's fused kernel. The saved config keeps the model's own values.
    dropout: float | None = None
    eval_every: int = 0  # steps between dev-subset evaluations (0: at the end of each predicting stage only)
    eval_limit: int = 500
    checkpoint_every: int = 100
    log_every: int = 20
    seed: int = 0
    cache: str | None = None  # teacher-logit cache folder; default: one keyed by its settings under the run root
    teacher_batch_size: int = 64
    # An audit trail: each process appends the window indices of every step it trains on to
    # windows-<rank>.jsonl in the work folder (how the data-parallel test sees the split).
    record_windows: bool = False

    def __post_init__(self) -> None:
        check_field_types(self, "train")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise EdgeQAError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        for name in ("batch_size", "checkpoint_every", "log_every", "eval_limit", "teacher_batch_size"):
            if getattr(self, name) < 1:
                raise EdgeQAError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.dropout is not None and not (isinstance(self.dropout, int | float) and 0 <= self.dropout < 1):
            raise EdgeQAError(f"train.dropout must be in [0, 1), got {self.dropout}")
        if self.limit is not None and self.limit < 1:
            raise EdgeQAError(f"train.limit must be positive, got {self.limit}")
        if self.eval_every < 0 or self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise EdgeQAError("train.eval_every and weight_decay must be >= 0, max_grad_norm > 0")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise EdgeQAError(f"train.micro_batch_size must be positive, got {self.micro_batch_size}")
        QAConfig(max_length=self.max_length, doc_stride=self.doc_stride)  # validates both

    @property
    def qa(self) -> QAConfig:
        return QAConfig(max_length=self.max_length, doc_stride=self.doc_stride)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for later in ("dropout", "record_windows"):  # added later: earlier runs and checkpoints keep their identity
            if d[later] == TrainConfig.__dataclass_fields__[later].default:
                del d[later]
        return d


@dataclass(frozen=True)
class DistillConfig:
    student: StudentSpec
    train: TrainConfig
    stages: tuple[Stage, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.stages:
            raise EdgeQAError("distillation needs at least one stage")

    @property
    def needs_teacher(self) -> bool:
        return any(s.loss.needs_teacher for s in self.stages) or not self.student.pretrained

    def to_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.to_dict(),
            "train": self.train.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        unknown = set(d) - {"student", "train", "stages", "loss"}
        if unknown:
            raise EdgeQAError(f"unknown distill setting(s): {', '.join(sorted(unknown))}")
        if "loss" in d and "stages" in d:
            raise EdgeQAError("give either one `loss` (a single stage) or `stages`, not both")
        if "data" not in (d.get("train") or {}):
            raise EdgeQAError("train.data (the SQuAD file to train on) is missing")
        train = TrainConfig(**known_fields(TrainConfig, dict(d["train"]), "train"))
        stages = []
        for i, raw in enumerate(d.get("stages") or [{"loss": d.get("loss") or {"hard": 1.0}}]):
            stage = known_fields(Stage, dict(raw), f"stage {i}")
            stages.append(Stage(**{**stage, "loss": LossConfig.from_dict(dict(stage.get("loss") or {}))}))
        return cls(StudentSpec.from_dict(dict(d.get("student") or {})), train, tuple(stages))


@dataclass
class Hooks:
    """How another transform (pruning) rides the loop without the loop knowing about it."""

    prepare: Callable[[Any, Any], None] | None = None  # (student, trainset): reshape the student before training
    start_stage: Callable[[Any, Any, int, int], None] | None = None  # (student, optimizer, stage, steps in stage)
    before_step: Callable[[int, int], None] | None = None  # (stage, step) before the step's first forward pass
    before_optimizer: Callable[[], None] | None = None  # gradients are complete, weights not yet updated
    after_step: Callable[[Any, int, int, int], None] | None = None  # (student, stage, step, steps in stage)
    to_save: Callable[[Any], Any] | None = None  # the model to write, e.g. a copy with pruning masks baked in
    may_keep: Callable[[int, int, int], bool] | None = None  # (stage, step, steps in stage): may this step's
    # model become the result? Gradual pruning says no until its target sparsity is reached.
    state: Callable[[], Any] | None = None  # extra state for the checkpoint ...
    load_state: Callable[[Any], None] | None = None  # ... and its way back on resume
    fingerprint: dict[str, Any] | None = None  # settings a checkpoint must match, besides the DistillConfig


# --- processes and precision -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the process group that torchrun / accelerate describe in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if world > 1 and not torch.distributed.is_initialized():
        import datetime

        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)
        # Rank 0 may spend a while on the teacher cache while the others wait.
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=3))
    rank = torch.distributed.get_rank() if world > 1 else 0
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if device == "cpu":
        torch.set_num_threads(max(1, default_threads() // local_world))
    return Dist(rank, world, local_rank, device)


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        torch.distributed.barrier()


@dataclass(frozen=True)
class Precision:
    """What `train.precision` asked for, what was chosen, and why: kept in training.json beside the result."""

    asked: str
    bf16: bool
    reason: str

    @property
    def chosen(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def to_dict(self) -> dict[str, Any]:
        return {"asked": self.asked, "chosen": self.chosen, "reason": self.reason}


NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX, x86 AVX512-BF16, ARM BF16; best first


def choose_precision(precision: str, device: str, cpu: CPU, cuda_bf16: bool = False) -> Precision:
    """bf16 autocast for "auto" only where bf16 matrix products run in hardware: CUDA devices that support it, CPUs
    with AMX or AVX512-BF16 (or ARM BF16). Elsewhere, AVX-512 CPUs included, bf16 is emulated through fp32 and
    slower than fp32 itself, so "auto" stays in fp32. A pure function of its arguments, so it is tested as one."""
    if precision != "auto":
        return Precision(precision, precision == "bf16", f"given: {precision}")
    if device.startswith("cuda"):
        return Precision("auto", cuda_bf16, "auto: CUDA bf16" if cuda_bf16 else "auto: no bf16 on this GPU")
    native = [f for f in NATIVE_BF16_FLAGS if f in cpu.flags]
    if cpu.native_bf16 and native:
        return Precision("auto", True, f"auto: CPU has {native[0]}")
    return Precision("auto", False, f"auto: no native bf16 on this CPU (isa {cpu.isa})")


def precision_for(precision: str, device: str) -> Precision:
    """`choose_precision` on this machine: its CPU's flags (bench.cpu) and, on CUDA, the device's bf16 support."""
    cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    return choose_precision(precision, device, this_cpu(), cuda_bf16)


# --- forward passes that expose what the losses need -----------------------------------------------------------


class ScoreTaps:
    """Forward hooks on chosen layers' query/key projections, to rebuild attention scores QK^T/sqrt(d)."""

    def __init__(self, model, layers: list[int]) -> None:
        self.q: dict[int, torch.Tensor] = {}
        self.k: dict[int, torch.Tensor] = {}
        self.heads = model.config.num_attention_heads
        encoder_layers = model.base_model.encoder.layer
        for i in layers:
            attn = encoder_layers[i].attention.self
            attn.query.register_forward_hook(lambda _m, _i, out, i=i: self.q.__setitem__(i, out))
            attn.key.register_forward_hook(lambda _m, _i, out, i=i: self.k.__setitem__(i, out))

    def scores(self, i: int) -> torch.Tensor:
        q, k = self.q[i], self.k[i]
        b, n, width = q.shape
        d = width // self.heads
        q = q.view(b, n, self.heads, d).transpose(1, 2)
        k = k.view(b, n, self.heads, d).transpose(1, 2)
        return q @ k.transpose(-1, -2) / math.sqrt(d)


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Set every dropout of `model` to `p`: the nn.Dropout modules, and the float rates that attention modules
    hand to scaled_dot_product_attention themselves (BERT's SDPA path reads `dropout_prob`, others
    `attention_dropout`). The config is left alone, so a saved model still records the rates it was built with."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        for name in ("dropout_prob", "attention_dropout"):
            if isinstance(getattr(m, name, None), float):
                setattr(m, name, p)


class Trainee(torch.nn.Module):
    """The student plus the hidden-state projection, so DistributedDataParallel sees every trained parameter."""

    def __init__(self, student, projection: torch.nn.Module | None, score_layers: list[int]) -> None:
        super().__init__()
        self.student = student
        self.projection = projection
        self.taps = ScoreTaps(student, score_layers) if score_layers else None

    def forward(self, inputs: dict[str, torch.Tensor], hidden: bool, scores: bool) -> dict[str, Any]:
        out = self.student(**inputs, output_hidden_states=hidden)
        result: dict[str, Any] = {"start": out.start_logits, "end": out.end_logits}
        if hidden:
            project = self.projection if self.projection is not None else (lambda x: x)
            result["hidden"] = [project(h) for h in out.hidden_states]
        if scores:
            result["scores"] = {i: self.taps.scores(i) for i in self.taps.q}
        return result


def _teacher_outputs(teacher, taps: ScoreTaps | None, inputs: dict[str, torch.Tensor], scores: bool) -> dict:
    with torch.no_grad():
        out = teacher(**inputs, output_hidden_states=True)
    result: dict[str, Any] = {"start": out.start_logits, "end": out.end_logits, "hidden": out.hidden_states}
    if scores:
        result["scores"] = {i: taps.scores(i) for i in taps.q}
    return result


# --- the loop --------------------------------------------------------------------------------------------------


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


@dataclass
class _Run:
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
    run = _Run(
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
        _run_stage(run, si, start_step if first else 0, state if first else None)
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
        teacher_fn = _teacher_fn(teacher, dist.device, precision.bf16)
        pad_id = tokenizer.pad_token_id or 0
        logits = build_cache(folder, key, trainset, teacher_fn, pad_id, tc.teacher_batch_size, progress)
    _barrier(dist)
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


def _run_stage(run: _Run, si: int, step: int, state: dict | None) -> None:
    """Train stage `si` from `step` to its end (a resumed run restores weights, optimiser and RNG from `state`)."""
    stage, total, tc, dist, hooks = run.cfg.stages[si], run.steps[si], run.tc, run.dist, run.hooks
    predicting = bool(stage.loss.hard or stage.loss.soft)
    optimizer = _optimizer(run.trainee, stage.lr, tc.weight_decay)
    scheduler = _scheduler(optimizer, total, stage.warmup)
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
    _barrier(dist)


class _Meter:
    """Training windows since the last log line, and when that was: the windows-per-second figure."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.windows, self.since = 0, time.perf_counter()

    def rate(self) -> float:
        return self.windows / max(time.perf_counter() - self.since, 1e-9)


def _step_loader(run: _Run, si: int, start: int, total: int) -> torch.utils.data.DataLoader:
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


def _train_step(run: _Run, model, micro: list[dict], si: int, keep_terms: bool) -> tuple[dict[str, list], int]:
    """Forward and backward over one step's micro-batches; gradients are complete when it returns. The loss terms
    stay on the device (detached) and only on logging steps: reading them back each micro-step would make every
    step wait for the device."""
    stage, dist = run.cfg.stages[si], run.dist
    kept: dict[str, list[torch.Tensor]] = {}
    for c, batch in enumerate(micro):
        sync = c == len(micro) - 1 or dist.world == 1
        with model.no_sync() if not sync else contextlib.nullcontext():
            terms = _micro_step(
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


def _log_step(run: _Run, bar, meter: _Meter, si: int, step: int, lr: float, kept: dict, windows: int) -> None:
    rate = meter.rate()
    # Summed per micro-batch in order, as Python floats: the same figures a step that read each term at once gave.
    terms = {k: sum(float(v) / windows for v in values) for k, values in kept.items()}
    entry = {"stage": si, "step": step, "lr": lr, "windows_per_s": round(rate, 2)}
    entry.update({k: round(v, 5) for k, v in terms.items()})
    run.history.append(entry)
    bar.set_postfix(loss=f"{terms['loss']:.3f}", win_s=f"{rate:.1f}")
    meter.reset()


def _evaluate_and_keep(run: _Run, si: int, step: int, total: int) -> None:
    """Score the dev subset (first process only) and keep the student when it is the best allowed so far."""
    if run.dist.main:
        metrics = _evaluate(run.trainee.student, run.tokenizer, run.eval_examples, run.names, run.tc, run.dist.device)
        run.history.append({"stage": si, "step": step, "eval": metrics})
        log.info("stage %d step %d: dev-subset EM %.2f F1 %.2f", si, step, metrics["exact"], metrics["f1"])
        eligible = run.hooks.may_keep is None or run.hooks.may_keep(si, step, total)
        if eligible and metrics["f1"] > run.best["f1"]:
            run.best = {"f1": metrics["f1"], "exact": metrics["exact"], "stage": si, "step": step}
            _save_model(run.trainee.student, run.tokenizer, run.work / "best", run.hooks)
        run.trainee.train()
    _barrier(run.dist)


def _checkpoint(run: _Run, optimizer, scheduler, si: int, step: int, rngs: bool = True) -> None:
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
            _write_log(run.work, run.history)
    if rngs:
        _barrier(run.dist)


def _finish(run: _Run, teacher_dir: Path | None) -> None:
    """The result (the last weights when nothing was evaluated), training.json and the log."""
    seconds = time.perf_counter() - run.t_begin
    dist = run.dist
    if dist.main:
        if run.best["step"] is None:  # no evaluation: the last weights are the result
            _save_model(run.trainee.student, run.tokenizer, run.work / "best", run.hooks)
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
        _write_log(run.work, run.history)
    _barrier(dist)


def _teacher_fn(teacher, device: str, bf16: bool):
    names = model_input_names(teacher)

    def run(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            out = teacher(**{k: torch.from_numpy(inputs[k]).to(device) for k in names})
        return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()

    return run


def _micro_step(model, teacher, taps, batch, names, loss_cfg, layer_map, device, bf16) -> dict[str, torch.Tensor]:
    """The loss terms of one micro-batch from `StepBatches` (pinned on CUDA, so its copy to the device does not
    wait), with the teacher's outputs: run alongside for intermediate layers, else read from the logit cache."""
    on = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "windows"}
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        t_out = None
        if loss_cfg.intermediate:
            t_inputs = {k: on[k] for k in model_input_names(teacher)}
            t_out = _teacher_outputs(teacher, taps, t_inputs, scores=bool(loss_cfg.attention))
        elif loss_cfg.soft:
            cached = on["teacher_logits"]
            t_out = {"start": cached[:, 0], "end": cached[:, 1]}
        s_out = model({k: on[k] for k in names}, hidden=loss_cfg.intermediate, scores=bool(loss_cfg.attention))
    return distill_loss(loss_cfg, layer_map, s_out, t_out, on["labels"], on["attention_mask"])


def _optimizer(trainee: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in trainee.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def _scheduler(optimizer, total: int, warmup: float):
    warm = max(1, int(total * warmup)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


EVAL_BATCH = {"cpu": 32, "cuda": 128}  # windows per forward pass in the dev-subset evaluation


class _DeviceEngine:
    """bench's engine interface on the training device: padded numpy inputs moved there, logits back as numpy.
    (bench's TorchEngine feeds CPU tensors, so a student on a GPU could not be scored where it trains.)"""

    backend = "torch"

    def __init__(self, model, input_names: tuple[str, ...], device: str) -> None:
        self.model, self.input_names, self.device = model.eval(), input_names, device

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()})
        return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()


def _evaluate(student, tokenizer, examples, names, tc: TrainConfig, device: str = "cpu") -> dict[str, float]:
    """EM/F1 on `examples`, tokenised and post-processed by bench.qa as at inference, the model run on `device`."""
    from edgeqa.bench.squad import SquadDataset

    qa = QAModel(_DeviceEngine(student, names, device), tokenizer, Path("."))
    answers = qa.answer(examples, tc.qa, batch_size=EVAL_BATCH[device.split(":")[0]], progress=False)
    metrics = score(SquadDataset("dev-subset", "1.1", list(examples)), {k: a.text for k, a in answers.items()})
    return {"exact": round(metrics["exact_match"], 3), "f1": round(metrics["f1"], 3), "questions": len(examples)}


def _save_model(student, tokenizer, folder: Path, hooks: Hooks) -> None:
    with atomic_dir(folder) as tmp:
        save_student(hooks.to_save(student) if hooks.to_save else student, tokenizer, tmp)


def _record_windows(run: _Run, si: int, step: int, micro: list[dict]) -> None:
    windows = sorted(int(i) for batch in micro for i in batch["windows"])
    with open(run.work / f"windows-{run.dist.rank}.jsonl", "a") as f:
        f.write(json.dumps({"stage": si, "step": step, "windows": windows}) + "\n")


def _write_log(work: Path, history: list[dict]) -> None:
    with atomic_file(work / "train_log.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")
