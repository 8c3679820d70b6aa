"""Structured pruning: attention heads and feed-forward neurons leave the model, and its matrices really shrink.

Heads ranked by the L2 norm of their query/key/value/output slices (or, `importance: gradient`, by the loss's
sensitivity to a mask on each head, Michel et al. 2019) are removed with transformers' `prune_heads`, which records
them in `config.pruned_heads`; feed-forward neurons ranked by the norm of their input row and output column are
removed in equal numbers from every layer, so `config.intermediate_size` still describes the model and the folder
loads with plain transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeqa.bench.families import families_with, has
from edgeqa.bench.files import EdgeQAError

if TYPE_CHECKING:
    import torch


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
