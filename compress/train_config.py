"""What a `distill` call is given: the `DistillConfig` (student, training settings, stages) that a recipe's
`distill` section holds and a checkpoint must match, and the `Hooks` through which pruning rides the loop.

`to_dict`/`from_dict` are the JSON form: a recorded config must keep loading, and fields added later are left out
at their defaults so that earlier runs and checkpoints keep their identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeqa.bench.files import EdgeQAError, check_field_types
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.serial import added_later, config_from_dict, config_to_dict
from edgeqa.compress.losses import LossConfig
from edgeqa.compress.student import StudentSpec


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
        return config_to_dict(self)


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
    # Dropout while training (hidden and attention); None keeps the model's. 0 makes a CPU step much cheaper: no random
    # masks to draw, and attention runs in PyTorch's fused kernel. The saved config keeps the model's own values.
    dropout: float | None = added_later(None)
    eval_every: int = 0  # steps between dev-subset evaluations (0: at the end of each predicting stage only)
    eval_limit: int = 500
    checkpoint_every: int = 100
    log_every: int = 20
    seed: int = 0
    cache: str | None = None  # teacher-logit cache folder; default: one keyed by its settings under the run root
    teacher_batch_size: int = 64
    # An audit trail: each process appends the window indices of every step it trains on to
    # windows-<rank>.jsonl in the work folder (how the data-parallel test sees the split).
    record_windows: bool = added_later(False)

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
        return config_to_dict(self)


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
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        unknown = set(d) - {"student", "train", "stages", "loss"}
        if unknown:
            raise EdgeQAError(f"unknown distill setting(s): {', '.join(sorted(unknown))}")
        if "loss" in d and "stages" in d:
            raise EdgeQAError("give either one `loss` (a single stage) or `stages`, not both")
        if "data" not in (d.get("train") or {}):
            raise EdgeQAError("train.data (the SQuAD file to train on) is missing")
        train = config_from_dict(TrainConfig, dict(d["train"]), "train")
        stages = tuple(
            config_from_dict(Stage, {**raw, "loss": dict(raw.get("loss") or {})}, f"stage {i}")
            for i, raw in enumerate(d["stages"] if "stages" in d else [{"loss": d.get("loss") or {"hard": 1.0}}])
        )
        return cls(StudentSpec.from_dict(dict(d.get("student") or {})), train, stages)


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
