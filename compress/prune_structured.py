"""Structured pruning: attention heads and feed-forward neurons leave the model, and its matrices really shrink.

Heads ranked by the L2 norm of their query/key/value/output slices (or, `importance: gradient`, by the loss's
sensitivity to a mask on each head, Michel et al. 2019) are removed with transformers' `prune_heads`, which records
them in `config.pruned_heads`; feed-forward neurons ranked by the norm of their input row and output column are
removed in equal numbers from every layer, so `config.intermediate_size` still describes the model and the folder
loads with plain transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from edgeqa.bench.families import families_with, has
from edgeqa.bench.files import EdgeQAError
from edgeqa.compress.prune_config import PruneConfig, register_pruning
from edgeqa.compress.prune_data import label_batches, model_inputs
from edgeqa.compress.student import StudentSpec, build_student

if TYPE_CHECKING:
    import torch

    from edgeqa.compress.train_config import DistillConfig


def check_structured(model) -> None:
    if not has(model.config.model_type, "bert_layout"):
        raise EdgeQAError(
            f"structured pruning knows {', '.join(families_with('bert_layout'))} models; "
            f"this one is {model.config.model_type!r}"
        )


def head_scores_by_magnitude(model) -> torch.Tensor:
    """(layers, heads) L2 norm of each head's query, key and value rows and output-projection columns."""
    import torch

    check_structured(model)
    rows = []
    for layer in model.base_model.encoder.layer:
        attn = layer.attention
        n, d = attn.self.num_attention_heads, attn.self.attention_head_size
        q, k, v = (getattr(attn.self, x).weight.detach().view(n, d, -1) for x in ("query", "key", "value"))
        o = attn.output.dense.weight.detach().view(-1, n, d).transpose(0, 1)
        rows.append(torch.sqrt((q**2).sum((1, 2)) + (k**2).sum((1, 2)) + (v**2).sum((1, 2)) + (o**2).sum((1, 2))))
    return torch.stack(rows)


def ffn_scores_by_magnitude(model) -> torch.Tensor:
    """(layers, neurons) L2 norm of each feed-forward neuron's input row and output column."""
    import torch

    check_structured(model)
    return torch.stack(
        [
            torch.sqrt(
                (layer.intermediate.dense.weight.detach() ** 2).sum(1)
                + (layer.output.dense.weight.detach() ** 2).sum(0)
            )
            for layer in model.base_model.encoder.layer
        ]
    )


def heads_to_remove(scores: torch.Tensor, share: float) -> dict[int, list[int]]:
    """The lowest-scoring `share` of all heads, ranked globally; refuses to empty a layer."""
    import torch

    n_layers, n_heads = scores.shape
    k = int(round(share * n_layers * n_heads))
    if k == 0:
        return {}
    order = torch.argsort(scores.flatten())[:k].tolist()
    plan: dict[int, list[int]] = {}
    for flat in order:
        plan.setdefault(flat // n_heads, []).append(flat % n_heads)
    for layer, heads in plan.items():
        if len(heads) >= n_heads:
            raise EdgeQAError(
                f"pruning {share:.0%} of the heads would remove every head of layer {layer}; lower `heads`"
            )
    return {layer: sorted(h) for layer, h in sorted(plan.items())}


def prune_heads_(model, plan: dict[int, list[int]]) -> None:
    """Remove heads physically (transformers' prune_heads; recorded in config.pruned_heads)."""
    check_structured(model)
    for layer, heads in plan.items():
        have = model.base_model.encoder.layer[layer].attention.self.num_attention_heads
        if len(heads) >= have:
            raise EdgeQAError(f"cannot remove all {have} heads of layer {layer}")
    model.prune_heads(plan)


def prune_ffn_(model, share: float, scores: torch.Tensor | None = None) -> int:
    """Remove the same number of lowest-scoring feed-forward neurons from every layer; returns the new width."""
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    check_structured(model)
    scores = ffn_scores_by_magnitude(model) if scores is None else scores
    width = scores.shape[1]
    keep = width - int(round(share * width))
    if keep < 1:
        raise EdgeQAError(f"pruning {share:.0%} of {width} feed-forward neurons leaves none")
    for layer, s in zip(model.base_model.encoder.layer, scores, strict=True):
        index = torch.sort(torch.argsort(s, descending=True)[:keep]).values
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, index, dim=1)
    model.config.intermediate_size = keep
    return keep


def cut_to_shape(teacher, layers: int, heads: int, ffn: int):
    """The teacher cut to a shape, for timing alone: `layers` of its layers spread as a student's are, the first
    `heads` heads of each and its `ffn` strongest feed-forward neurons. Untrained: only its latency means anything,
    and real weights keep int8's scales what a made model's would be."""
    import copy

    config = teacher.config
    if layers > config.num_hidden_layers or heads > config.num_attention_heads or ffn > config.intermediate_size:
        raise EdgeQAError(f"shape l{layers}-h{heads}-f{ffn} is larger than the teacher")
    n_teacher = config.num_hidden_layers
    model = (
        build_student(StudentSpec(num_hidden_layers=layers), teacher) if layers < n_teacher else copy.deepcopy(teacher)
    )
    n_heads = config.num_attention_heads
    if heads < n_heads:
        prune_heads_(model, {i: list(range(heads, n_heads)) for i in range(layers)})
    if ffn < config.intermediate_size:
        prune_ffn_(model, (config.intermediate_size - ffn) / config.intermediate_size)
    return model


def gradient_scores(model, batches, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Head and neuron importance as |d loss / d mask|, summed over batches (masks of ones on heads and neurons).

    Heads: a multiplicative gate on each head's context vector, through a hook on the attention output projection's
    input; neurons: a gate on the intermediate activations. `loss_fn(model, batch)` returns a scalar loss. The
    absolute value is taken per batch, as Michel et al. take it per example: summed first, gradients of opposite
    sign cancel and useful heads look idle (recipes/prune-importance-cpu.yaml measures the ranking's effect).
    """
    import torch

    check_structured(model)
    layers = model.base_model.encoder.layer
    head_gates = [torch.ones(lay.attention.self.num_attention_heads, requires_grad=True) for lay in layers]
    ffn_gates = [torch.ones(lay.intermediate.dense.out_features, requires_grad=True) for lay in layers]
    handles = []
    for layer, hg, fg in zip(layers, head_gates, ffn_gates, strict=True):
        d = layer.attention.self.attention_head_size

        def gate_heads(_m, args, hg=hg, d=d):
            x = args[0]
            return (x.view(*x.shape[:-1], -1, d) * hg[:, None]).view_as(x)

        handles.append(layer.attention.output.dense.register_forward_pre_hook(gate_heads))
        handles.append(layer.intermediate.register_forward_hook(lambda _m, _i, out, fg=fg: out * fg))
    heads = torch.zeros(len(layers), len(head_gates[0]))
    ffn = torch.zeros(len(layers), len(ffn_gates[0]))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            loss_fn(model, batch).backward()
            for i, (hg, fg) in enumerate(zip(head_gates, ffn_gates, strict=True)):
                heads[i] += hg.grad.abs()
                ffn[i] += fg.grad.abs()
                hg.grad, fg.grad = None, None
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return heads, ffn


@register_pruning
@dataclass(frozen=True, kw_only=True)
class StructuredConfig(PruneConfig):
    """Attention heads and feed-forward neurons removed: see the module docstring."""

    method: ClassVar[str] = "structured"
    heads: float = 0.0  # share of all attention heads to remove
    ffn: float = 0.0  # share of each layer's feed-forward neurons to remove
    importance: str = "magnitude"  # "magnitude" (weight norms) or "gradient" (the loss's sensitivity)
    importance_batches: int = 32  # gradient importance: batches of 16 training windows to measure it on
    why_data = "gradient importance measures the loss"

    def validate(self) -> None:
        if not (self.heads or self.ffn):
            raise EdgeQAError("structured pruning needs heads > 0 or ffn > 0")
        if self.importance not in ("magnitude", "gradient"):
            raise EdgeQAError(f"importance must be 'magnitude' or 'gradient', got {self.importance!r}")

    @property
    def data_windows(self) -> int:
        return 16 * self.importance_batches if self.importance == "gradient" else 0

    def check_model(self, config) -> None:
        if not has(config.model_type, "bert_layout"):
            raise EdgeQAError(f"structured pruning knows {', '.join(families_with('bert_layout'))} models; "
                              f"this one is {config.model_type!r}")  # fmt: skip
        if self.heads and config.pruned_heads:
            raise EdgeQAError("the model already lost heads to pruning; prune heads once, from the unpruned model")
        n = config.num_hidden_layers * config.num_attention_heads
        if self.heads and round(self.heads * n) >= n:
            raise EdgeQAError(f"heads={self.heads} removes every head")

    def check_recovery(self, recovery: DistillConfig) -> None:
        if self.heads and any(s.loss.attention for s in recovery.stages):
            raise EdgeQAError("attention transfer needs the teacher's head count; heads are being pruned")

    def apply(self, model, trainset=None, gradual: bool = False) -> dict[str, Any]:
        """Rank heads and neurons (by weight norms, or by the loss on training windows), then remove them."""
        if self.importance == "gradient":
            if trainset is None:
                raise EdgeQAError("gradient importance needs training data to measure the loss on")
            batches = label_batches(trainset, self.importance_batches)
            head_scores, ffn_scores = gradient_scores(model, batches, span_loss)
        else:
            head_scores, ffn_scores = head_scores_by_magnitude(model), ffn_scores_by_magnitude(model)
        if self.heads and model.config.pruned_heads:
            raise EdgeQAError("this model already lost heads to pruning; prune its heads once, from the unpruned model")
        plan = heads_to_remove(head_scores, self.heads) if self.heads else {}
        prune_heads_(model, plan)
        width = prune_ffn_(model, self.ffn, ffn_scores) if self.ffn else model.config.intermediate_size
        return {"heads_removed": {str(k): v for k, v in plan.items()}, "intermediate_size": width}

    def record(self, model) -> dict[str, Any]:
        """What is left, as the config the folder loads with records it."""
        heads = model.config.num_attention_heads
        removed = {str(k): len(v) for k, v in (model.config.pruned_heads or {}).items()}
        return {
            "heads_per_layer": [heads - removed.get(str(i), 0) for i in range(model.config.num_hidden_layers)],
            "intermediate_size": model.config.intermediate_size,
        }

    def describe(self, record: dict[str, Any]) -> str:
        kept = record.get("heads_per_layer")
        width = record.get("intermediate_size")
        parts = [
            f"heads per layer {kept}" if kept else f"heads {self.heads}",
            f"FFN {width}" if width else f"FFN {self.ffn}",
        ]
        return f"structured ({self.importance}): " + ", ".join(parts)


def span_loss(model, batch) -> torch.Tensor:
    """The QA span loss of a labelled batch: what gradient importance differentiates."""
    from edgeqa.compress.losses import span_ce  # imports torch at its top: this module must not

    inputs = model_inputs(batch)
    out = model(**inputs)
    return span_ce(out.start_logits, out.end_logits, batch["labels"], inputs["attention_mask"].bool())
