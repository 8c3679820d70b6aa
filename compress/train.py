"""The distillation (and fine-tuning) loop: one readable function, `distill`, from a config to a student folder.

It runs as one process, or data-parallel under `torchrun` / `accelerate launch` (DistributedDataParallel, gloo on
CPU, nccl on GPUs): each optimiser step takes one global batch of `batch_size` windows, split over the processes
and then into micro-batches (gradient accumulation), so the same recipe means the same updates on any launcher.

Everything needed to continue is saved every `checkpoint_every` steps (weights, optimiser, scheduler, RNG, stage
and step); batch order is a function of (seed, stage, epoch), so a run killed anywhere and started again with the
same command ends with the same weights as one that never stopped (same hardware and thread count).
"""

from __future__ import annotations

import dataclasses
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

from bench.engines import QAModel, TorchEngine, default_threads, load_tokenizer, load_torch_qa_model, model_input_names
from bench.files import EdgeQAError, atomic_dir, atomic_file, known_fields, write_json
from bench.metric import score
from bench.qa import QAConfig, pad
from bench.squad import load_squad
from compress.losses import LossConfig, distill_loss
from compress.student import (
    StudentSpec,
    build_student,
    check_layer_map,
    default_layer_map,
    save_student,
    student_config,
)
from compress.trainset import build_cache, cache_folder, cache_key, check_cache, epoch_batches, load_trainset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One phase of training with its own loss, length and learning-rate schedule (warm-up, then linear decay)."""

    loss: LossConfig
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    lr: float = 1e-4
    warmup: float = 0.1  # share of the stage's steps

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
    precision: str = "auto"  # "bf16" autocast, "fp32", or "auto": bf16 where the hardware has fast bf16
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

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise EdgeQAError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        for name in ("batch_size", "checkpoint_every", "log_every", "eval_limit", "teacher_batch_size"):
            if getattr(self, name) < 1:
                raise EdgeQAError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.dropout is not None and not (isinstance(self.dropout, int | float) and 0 <= self.dropout < 1):
            raise EdgeQAError(f"train.dropout must be in [0, 1), got {self.dropout}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise EdgeQAError(f"train.micro_batch_size must be positive, got {self.micro_batch_size}")
        QAConfig(max_length=self.max_length, doc_stride=self.doc_stride)  # validates both

    @property
    def qa(self) -> QAConfig:
        return QAConfig(max_length=self.max_length, doc_stride=self.doc_stride)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.dropout is None:  # added later: runs and checkpoints made before it keep their identity
            del d["dropout"]
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


def use_bf16(precision: str, device: str) -> bool:
    if precision != "auto":
        return precision == "bf16"
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:  # AMX / AVX512-BF16 CPUs: oneDNN runs bf16 matmuls natively
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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
    bf16 = use_bf16(tc.precision, dist.device)
    if tc.batch_size % dist.world:
        raise EdgeQAError(f"train.batch_size {tc.batch_size} does not split over {dist.world} processes")
    trainset = load_trainset(tc.data, tc.limit, tokenizer, tc.qa)
    steps = [_steps(s, len(trainset), tc.batch_size) for s in cfg.stages]
    checkpoint = work / "checkpoint.pt"
    state = _load_checkpoint(checkpoint, record) if checkpoint.exists() else None

    # Teacher logits: computed once by the first process (others wait), read from disk by every process.
    logits = None
    if any(s.loss.soft and not s.loss.intermediate for s in cfg.stages):
        key = cache_key(teacher_dir, trainset, tc.qa, "bf16" if bf16 else "fp32")
        folder = Path(tc.cache) if tc.cache else cache_folder(cache_root or work / "cache", key)
        check_cache(folder, key)  # refuses a cache of other settings before any work
        teacher_fn = _teacher_fn(teacher, dist.device, bf16)
        if dist.main:
            logits = build_cache(
                folder, key, trainset, teacher_fn, tokenizer.pad_token_id or 0, tc.teacher_batch_size, progress
            )
        _barrier(dist)
        if not dist.main:
            logits = np.load(folder / "logits.npy", mmap_mode="r")

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
    score_layers = sorted({s for m, st in zip(layer_maps, cfg.stages, strict=True) if st.loss.attention for s in m})
    trainee = Trainee(student, projection, score_layers).to(dist.device)
    t_score_layers = sorted(
        {t for m, st in zip(layer_maps, cfg.stages, strict=True) if st.loss.attention for t in m.values()}
    )
    teacher_taps = None
    if teacher is not None:
        teacher.to(dist.device).eval()
        teacher_taps = ScoreTaps(teacher, t_score_layers) if t_score_layers else None
    names = model_input_names(student)
    work.mkdir(parents=True, exist_ok=True)

    history: list[dict] = state["history"] if state else []
    best = state["best"] if state else {"f1": -1.0, "step": None}
    start_stage, start_step = (state["stage"], state["step"]) if state else (0, 0)
    t_begin -= state["seconds"] if state else 0.0
    eval_examples = load_squad(eval_data, tc.eval_limit).examples if eval_data and dist.main else None

    for si in range(start_stage, len(cfg.stages)):
        stage, total = cfg.stages[si], steps[si]
        predicting = bool(stage.loss.hard or stage.loss.soft)
        optimizer = _optimizer(trainee, stage.lr, tc.weight_decay)
        scheduler = _scheduler(optimizer, total, stage.warmup)
        step = start_step if si == start_stage else 0
        torch.manual_seed(tc.seed * 1000 + si * 10 + dist.rank)  # dropout masks: per stage and process
        if hooks.start_stage:
            hooks.start_stage(trainee.student, optimizer, si, total)
        if state and si == start_stage:
            _restore(state, trainee, optimizer, scheduler, dist)
            if hooks.load_state and state.get("hooks") is not None:
                hooks.load_state(state["hooks"])
        model = trainee
        if dist.world > 1:
            # The QA head idles in an intermediate-only stage, the projection in a predictions-only one.
            idle = not predicting or (projection is not None and not stage.loss.intermediate)
            model = torch.nn.parallel.DistributedDataParallel(trainee, find_unused_parameters=idle)
        model.train()
        per_epoch = len(trainset) // tc.batch_size
        order_epoch, order = -1, []
        bar = tqdm(
            total=total,
            initial=step,
            desc=f"stage {si + 1}/{len(cfg.stages)}",
            disable=not (progress and dist.main),
            mininterval=1 if sys.stderr.isatty() else 60,  # a log file gets a line a minute, not ten a second
        )
        window_count, t_log = 0, time.perf_counter()
        while step < total:
            epoch, j = divmod(step, per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_batches(trainset.lengths, tc.batch_size, tc.seed, si, epoch)
            mine = order[j][dist.rank :: dist.world]
            if hooks.before_step:
                hooks.before_step(si, step)
            micro = tc.micro_batch_size or len(mine)
            chunks = [mine[i : i + micro] for i in range(0, len(mine), micro)]
            terms_sum: dict[str, float] = {}
            for c, idx in enumerate(chunks):
                sync = c == len(chunks) - 1 or dist.world == 1
                ctx = model.no_sync() if not sync else _nullcontext()
                with ctx:
                    terms = _micro_step(
                        model,
                        teacher,
                        teacher_taps,
                        trainset,
                        logits,
                        idx,
                        names,
                        stage.loss,
                        layer_maps[si],
                        dist.device,
                        bf16,
                        tokenizer.pad_token_id or 0,
                    )
                    # Sum over examples / global batch, times world because DDP averages gradients over processes.
                    (terms["loss"] * dist.world / tc.batch_size).backward()
                for k, v in terms.items():
                    terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach()) / len(mine)
            if tc.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for p in trainee.parameters() if p.requires_grad], tc.max_grad_norm)
            if hooks.before_optimizer:
                hooks.before_optimizer()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if hooks.after_step:
                hooks.after_step(trainee.student, si, step, total)
            window_count += len(mine) * dist.world
            bar.update(1)
            if step % tc.log_every == 0 or step == total:
                rate = window_count / max(time.perf_counter() - t_log, 1e-9)
                entry = {"stage": si, "step": step, "lr": scheduler.get_last_lr()[0], "windows_per_s": round(rate, 2)}
                entry.update({k: round(v, 5) for k, v in terms_sum.items()})
                history.append(entry)
                bar.set_postfix(loss=f"{terms_sum['loss']:.3f}", win_s=f"{rate:.1f}")
                window_count, t_log = 0, time.perf_counter()
            at_end = step == total
            if predicting and eval_data and ((tc.eval_every and step % tc.eval_every == 0) or at_end):
                if dist.main:
                    metrics = _evaluate(trainee.student, tokenizer, eval_examples, names, tc)
                    history.append({"stage": si, "step": step, "eval": metrics})
                    log.info("stage %d step %d: dev-subset EM %.2f F1 %.2f", si, step, metrics["exact"], metrics["f1"])
                    eligible = hooks.may_keep is None or hooks.may_keep(si, step, total)
                    if eligible and metrics["f1"] > best["f1"]:
                        best = {"f1": metrics["f1"], "exact": metrics["exact"], "stage": si, "step": step}
                        _save_model(trainee.student, tokenizer, work / "best", hooks)
                    model.train()
                _barrier(dist)
                window_count, t_log = 0, time.perf_counter()  # throughput counts training only
            if step % tc.checkpoint_every == 0 or at_end:
                seconds = time.perf_counter() - t_begin
                rngs = _gather_rng(dist)
                if dist.main:
                    _save_checkpoint(
                        checkpoint,
                        record,
                        trainee,
                        optimizer,
                        scheduler,
                        si,
                        step,
                        best,
                        history,
                        seconds,
                        rngs,
                        hooks.state() if hooks.state else None,
                    )
                    _write_log(work, history)
                _barrier(dist)
        bar.close()
        if si + 1 < len(cfg.stages) and dist.main:  # the next stage starts from here after a restart
            seconds = time.perf_counter() - t_begin
            _save_checkpoint(checkpoint, record, trainee, None, None, si + 1, 0, best, history, seconds, None)
        _barrier(dist)
        state = None

    seconds = time.perf_counter() - t_begin
    if dist.main:
        if best["step"] is None:  # no evaluation: the last weights are the result
            _save_model(trainee.student, tokenizer, work / "best", hooks)
        summary = {
            "config": cfg.to_dict(),
            "teacher": str(teacher_dir) if teacher_dir else None,
            "best": best,
            "train_seconds": round(seconds, 1),
            "windows": len(trainset),
            "questions": trainset.questions,
            "steps": steps,
            "processes": dist.world,
            "device": dist.device,
            "bf16": bf16,
            "parameters": sum(p.numel() for p in trainee.student.parameters()),
        }
        write_json(work / "training.json", summary)
        _write_log(work, history)
    _barrier(dist)
    return work / "best"


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


def _teacher_fn(teacher, device: str, bf16: bool):
    names = model_input_names(teacher)

    def run(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            out = teacher(**{k: torch.from_numpy(inputs[k]).to(device) for k in names})
        return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()

    return run


def _micro_step(model, teacher, taps, trainset, logits, idx, names, loss_cfg, layer_map, device, bf16, pad_id):
    all_inputs = {k: torch.from_numpy(v) for k, v in pad(trainset, idx, pad_id).items()}
    mask, width = all_inputs["attention_mask"], all_inputs["input_ids"].shape[1]
    inputs = {k: all_inputs[k].to(device) for k in names}
    labels = torch.from_numpy(trainset.labels[idx]).to(device)
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        t_out = None
        if loss_cfg.intermediate:
            t_inputs = {k: all_inputs[k].to(device) for k in model_input_names(teacher)}
            t_out = _teacher_outputs(teacher, taps, t_inputs, scores=bool(loss_cfg.attention))
        elif loss_cfg.soft:
            cached = torch.from_numpy(np.asarray(logits[idx, :, :width], dtype=np.float32))
            t_out = {"start": cached[:, 0].to(device), "end": cached[:, 1].to(device)}
        s_out = model(inputs, hidden=loss_cfg.intermediate, scores=bool(loss_cfg.attention))
    return distill_loss(loss_cfg, layer_map, s_out, t_out, labels, mask.to(device))


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


def _evaluate(student, tokenizer, examples, names, tc: TrainConfig) -> dict[str, float]:
    from bench.squad import SquadDataset

    engine = TorchEngine(student, names, torch.get_num_threads())
    qa = QAModel(engine, tokenizer, Path("."))
    answers = qa.answer(examples, tc.qa, batch_size=32, progress=False)
    metrics = score(SquadDataset("dev-subset", "1.1", list(examples)), {k: a.text for k, a in answers.items()})
    return {"exact": round(metrics["exact_match"], 3), "f1": round(metrics["f1"], 3), "questions": len(examples)}


def _save_model(student, tokenizer, folder: Path, hooks: Hooks) -> None:
    with atomic_dir(folder) as tmp:
        save_student(hooks.to_save(student) if hooks.to_save else student, tokenizer, tmp)


def _gather_rng(dist: Dist) -> list:
    """Every process's RNG state (dropout masks differ per process), gathered to the first for the checkpoint."""
    mine = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if dist.device != "cpu" else None}
    if dist.world == 1:
        return [mine]
    out: list = [None] * dist.world
    torch.distributed.all_gather_object(out, mine)
    return out


def _save_checkpoint(
    path, record, trainee, optimizer, scheduler, stage, step, best, history, seconds, rngs, extra=None
) -> None:
    state = {
        "config": json.loads(json.dumps(record)),
        "model": trainee.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer else None,
        "scheduler": scheduler.state_dict() if scheduler else None,
        "rng": rngs,  # per process; None at a stage boundary, where each stage seeds afresh
        "stage": stage,
        "step": step,
        "best": best,
        "history": history,
        "seconds": seconds,
        "hooks": extra,
    }
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, record: dict) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise EdgeQAError(f"{path}: unreadable checkpoint ({e}); delete it to start over") from e
    if state.get("config") != json.loads(json.dumps(record)):
        raise EdgeQAError(f"{path}: checkpoint of a run with other settings; delete it or change the step's name")
    log.info("resuming from %s: stage %d, step %d", path, state["stage"], state["step"])
    return state


def _restore(state: dict, trainee, optimizer, scheduler, dist: Dist) -> None:
    trainee.load_state_dict(state["model"])
    if state["optimizer"] is None:  # saved at a stage boundary: the new stage starts fresh
        return
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if len(state["rng"]) != dist.world:
        raise EdgeQAError(f"checkpoint was saved by {len(state['rng'])} processes; resume it with as many")
    rng = state["rng"][dist.rank]
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"] is not None and dist.device != "cpu":
        torch.cuda.set_rng_state(rng["cuda"])


def _write_log(work: Path, history: list[dict]) -> None:
    with atomic_file(work / "train_log.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")
