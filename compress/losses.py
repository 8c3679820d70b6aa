"""Distillation losses as data: a `LossConfig` names the weight of each term, `distill_loss` computes them.

Terms (each summed over the batch's examples, so that callers can normalise by the global batch):
- hard: cross-entropy of the student's start/end logits against the labelled span (the plain fine-tuning loss);
- soft: KL(teacher || student) of the start/end distributions at temperature T, scaled by T^2 (Hinton et al.) so
  its gradients keep their size when T changes;
- hidden: MSE between student and teacher hidden states of mapped layers, through a learned projection when the
  widths differ (TinyBERT);
- attention: MSE between the attention scores (QK^T / sqrt(d), before softmax) of mapped layers (TinyBERT);
- embedding: MSE between the embedding outputs, through the same projection.
Padding never counts: logits past a window's end are masked, and the MSE terms average over real tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.serial import config_from_dict, config_to_dict

TERMS = ("hard", "soft", "hidden", "attention", "embedding")


@dataclass(frozen=True)
class LossConfig:
    hard: float = 0.0
    soft: float = 0.0
    temperature: float = 1.0
    hidden: float = 0.0
    attention: float = 0.0
    embedding: float = 0.0
    layer_map: dict[int, int] | None = field(default=None)  # student layer -> teacher layer; None: the default map

    def __post_init__(self) -> None:
        for term in TERMS:
            if getattr(self, term) < 0:
                raise EdgeQAError(f"loss weight {term} must not be negative, got {getattr(self, term)}")
        if not any(getattr(self, t) for t in TERMS):
            raise EdgeQAError(f"a loss needs at least one positive weight among {', '.join(TERMS)}")
        if self.temperature <= 0:
            raise EdgeQAError(f"temperature must be positive, got {self.temperature}")
        if self.layer_map is not None:
            try:
                object.__setattr__(self, "layer_map", {int(s): int(t) for s, t in dict(self.layer_map).items()})
            except (TypeError, ValueError) as e:
                raise EdgeQAError(f"layer_map maps student layer numbers to teacher layer numbers: {e}") from e

    @property
    def terms(self) -> tuple[str, ...]:
        """The terms this loss weighs (positive weight), in TERMS order."""
        return tuple(t for t in TERMS if getattr(self, t))

    @property
    def needs_teacher(self) -> bool:
        return bool(self.soft or self.intermediate)

    @property
    def intermediate(self) -> bool:
        """Needs the teacher's hidden states or attention, which are too large to cache: teacher runs alongside."""
        return bool(self.hidden or self.attention or self.embedding)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LossConfig:
        return config_from_dict(cls, d, "loss")


def _masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits.float().masked_fill(~mask, torch.finfo(torch.float32).min)


def span_ce(start: torch.Tensor, end: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over examples of (CE(start) + CE(end)) / 2; labels is (B, 2)."""
    ce_start = F.cross_entropy(_masked(start, mask), labels[:, 0], reduction="sum")
    ce_end = F.cross_entropy(_masked(end, mask), labels[:, 1], reduction="sum")
    return (ce_start + ce_end) / 2


def span_kl(
    start: torch.Tensor, end: torch.Tensor, t_start: torch.Tensor, t_end: torch.Tensor, mask: torch.Tensor, T: float
) -> torch.Tensor:
    """Sum over examples of T^2 * (KL(start) + KL(end)) / 2 between temperature-softened distributions."""
    total = start.new_zeros((), dtype=torch.float32)
    for s, t in ((start, t_start), (end, t_end)):
        log_p_student = F.log_softmax(_masked(s, mask) / T, dim=-1)
        log_p_teacher = F.log_softmax(_masked(t, mask) / T, dim=-1)
        kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).masked_fill(~mask, 0.0).sum()
        total = total + kl
    return total * (T * T) / 2


def token_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over examples of the mean squared error over that example's real tokens: (B, L, H) inputs."""
    per_token = (a.float() - b.float()).pow(2).mean(-1) * mask
    return (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).sum()


def score_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over examples of the MSE of attention scores (B, heads, L, L) over pairs of real tokens."""
    pair = (mask[:, None, :, None] & mask[:, None, None, :]).float()
    per_example = ((a.float() - b.float()).pow(2) * pair).sum((1, 2, 3))
    return (per_example / (pair.sum((1, 2, 3)) * a.shape[1]).clamp(min=1)).sum()


def distill_loss(
    cfg: LossConfig,
    layer_map: dict[int, int],
    student: dict[str, Any],
    teacher: dict[str, Any] | None,
    labels: torch.Tensor,
    mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Weighted terms and their sum ("loss"); `student`/`teacher` hold start, end, and when needed hidden states
    (the student's already projected to the teacher's width) and attention scores by layer."""
    terms: dict[str, torch.Tensor] = {}
    mask = mask.bool()
    if cfg.hard:
        terms["hard"] = span_ce(student["start"], student["end"], labels, mask)
    if cfg.soft:
        terms["soft"] = span_kl(
            student["start"], student["end"], teacher["start"], teacher["end"], mask, cfg.temperature
        )
    if cfg.embedding:
        terms["embedding"] = token_mse(student["hidden"][0], teacher["hidden"][0], mask)
    if cfg.hidden:
        terms["hidden"] = sum(
            token_mse(student["hidden"][s + 1], teacher["hidden"][t + 1], mask) for s, t in layer_map.items()
        )
    if cfg.attention:
        terms["attention"] = sum(
            score_mse(student["scores"][s], teacher["scores"][t], mask) for s, t in layer_map.items()
        )
    terms["loss"] = sum(getattr(cfg, name) * value for name, value in terms.items())
    return terms
