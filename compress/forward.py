"""Forward passes that expose what the losses need: the student's logits, hidden states (projected to the
teacher's width) and attention scores, the teacher's beside them, and one micro-batch's loss terms."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from edgeqa.bench.engines import model_input_names
from edgeqa.compress.losses import distill_loss


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


def teacher_outputs(teacher, taps: ScoreTaps | None, inputs: dict[str, torch.Tensor], scores: bool) -> dict:
    with torch.no_grad():
        out = teacher(**inputs, output_hidden_states=True)
    result: dict[str, Any] = {"start": out.start_logits, "end": out.end_logits, "hidden": out.hidden_states}
    if scores:
        result["scores"] = {i: taps.scores(i) for i in taps.q}
    return result


def teacher_fn(teacher, device: str, bf16: bool):
    """The teacher as the logit cache calls it: numpy windows in, start and end logits out as float32 numpy."""
    names = model_input_names(teacher)

    def run(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            out = teacher(**{k: torch.from_numpy(inputs[k]).to(device) for k in names})
        return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()

    return run


def micro_step(model, teacher, taps, batch, names, loss_cfg, layer_map, device, bf16) -> dict[str, torch.Tensor]:
    """The loss terms of one micro-batch from `StepBatches` (pinned on CUDA, so its copy to the device does not
    wait), with the teacher's outputs: run alongside for intermediate layers, else read from the logit cache."""
    on = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "windows"}
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        t_out = None
        if loss_cfg.intermediate:
            t_inputs = {k: on[k] for k in model_input_names(teacher)}
            t_out = teacher_outputs(teacher, taps, t_inputs, scores=bool(loss_cfg.attention))
        elif loss_cfg.soft:
            cached = on["teacher_logits"]
            t_out = {"start": cached[:, 0], "end": cached[:, 1]}
        s_out = model({k: on[k] for k in names}, hidden=loss_cfg.intermediate, scores=bool(loss_cfg.attention))
    return distill_loss(loss_cfg, layer_map, s_out, t_out, on["labels"], on["attention_mask"])
