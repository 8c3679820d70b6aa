"""Unstructured magnitude pruning: the encoder's nn.Linear weights (QA head and embeddings excluded unless
`include` says otherwise) lose their smallest-magnitude weights, with one threshold over all of them (`scope:
global`) or one per matrix (`scope: layer`); at once, or along Zhu and Gupta's cubic schedule during recovery
training (s_t = s_f + (s_i - s_f)(1 - t/T)^3, from s_i = `initial`).

Masks live in `torch.nn.utils.prune` re-parametrisations while training and are baked into the weights before
saving, so a pruned folder holds plain tensors that load anywhere. With `select: input` each matrix keeps the
share of zeros that magnitude gives it, but which weights go is ranked by |w_ij| x RMS(x_j), the weight times the
root-mean-square of its input over calibration windows (Wanda's score, Sun et al. 2023): used inside each matrix
only, because ranked across matrices that score empties the FFN output matrices.

Dense ONNX Runtime kernels do not skip zeros: unstructured sparsity shrinks compressed files, not latency.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.serial import added_later
from edgeqa.compress.prune_config import DEFAULT_INCLUDE, REFIT_TARGETS, PruneConfig, register_pruning
from edgeqa.compress.prune_data import input_batches
from edgeqa.compress.prune_refit import block_of, real_tokens, refit_kept_weights

if TYPE_CHECKING:
    import torch

SELECTIONS = ("magnitude", "input", "obs")  # which weights go inside a matrix: by |w|, by |w| x input RMS, by OBS
SELECTION_WORDS = {"input": "chosen by |w| x input RMS", "obs": "chosen by OBS saliency"}
REFIT_MIN_RISE = 0.005  # cubic: a mask update that adds fewer zeros than this (0.5 points) is not worth a refit


def prunable_linears(model, include=DEFAULT_INCLUDE, exclude=()) -> dict[str, torch.nn.Linear]:
    """The nn.Linear modules whose names match `include` and not `exclude`."""
    import torch

    found = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and any(fnmatch.fnmatchcase(name, p) for p in include)
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    }
    if not found:
        raise EdgeQAError(f"no nn.Linear layer matches include {list(include)} minus exclude {list(exclude)}")
    return found


def skeleton(config):
    """The QA model of a transformers config with shapes but no weights (meta tensors): for checks before any work."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    with torch.device("meta"):
        return AutoModelForQuestionAnswering.from_config(config)


def cubic_sparsity(step: int, total: int, final: float, ramp: float = 0.7, initial: float = 0.0) -> float:
    """Zhu and Gupta's schedule: from `initial` at step 0, fast early pruning, slow near the target, reached at
    `ramp` of the steps."""
    end = max(1, round(total * ramp))
    t = min(step, end) / end
    return final + (initial - final) * (1 - t) ** 3


def cubic_done(step: int, total: int, ramp: float, update_every: int) -> bool:
    """Whether a cubic schedule's masks have reached their final sparsity: masks change every `update_every` steps,
    so the first update at or after the end of the ramp (or the last step)."""
    end = max(1, round(total * ramp))
    first_update_at_end = -(-end // update_every) * update_every
    return step >= min(first_update_at_end, total)


def apply_magnitude_masks(
    layers: dict[str, torch.nn.Linear],
    sparsity: float,
    scope: str = "global",
    input_rms: dict[str, torch.Tensor] | None = None,
) -> None:
    """(Re)compute masks so that `sparsity` of the weights are zero; weights pruned earlier stay pruned.

    Magnitude decides how many weights each matrix keeps; with `input_rms` (per input feature, see `input_rms`)
    the ones it keeps are those with the largest |w_ij| x rms_j inside the matrix instead of the largest |w_ij|.
    """
    import torch
    from torch.nn.utils import prune as torch_prune

    current = {name: _masked_weight(m).detach().abs() for name, m in layers.items()}
    if scope == "global":
        scores = torch.cat([w.flatten() for w in current.values()])
        k = int(sparsity * scores.numel())
        threshold = torch.kthvalue(scores.float(), k).values if k > 0 else scores.new_tensor(-1.0)
        masks = {name: (w > threshold).to(w.dtype) for name, w in current.items()}
    else:
        masks = {}
        for name, w in current.items():
            k = int(sparsity * w.numel())
            threshold = torch.kthvalue(w.flatten().float(), k).values if k > 0 else w.new_tensor(-1.0)
            masks[name] = (w > threshold).to(w.dtype)
    if input_rms is not None:
        for name, w in current.items():
            keep = int(masks[name].sum())  # at most the nonzeros
            score = (w * input_rms[name].to(w.dtype)[None, :]).flatten()
            score[w.flatten() == 0] = -1  # a weight pruned earlier is never picked, not even beside a dead input
            chosen = torch.zeros_like(score)
            chosen[score.topk(keep).indices] = 1
            masks[name] = chosen.view_as(w)
    for name, m in layers.items():
        if torch_prune.is_pruned(m):
            m.weight_mask.copy_(masks[name])
        else:
            torch_prune.custom_from_mask(m, "weight", masks[name])


def input_rms(model, layers: dict[str, torch.nn.Linear], batches) -> dict[str, torch.Tensor]:
    """Root-mean-square of each input feature of each layer over the real (unpadded) tokens of `batches`."""
    import torch

    sums = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in layers.items()}
    count = {"tokens": 0, "mask": None}

    def grab(name):
        def hook(_m, args):
            x = real_tokens(args[0], count["mask"]).detach()
            sums[name] += x.double().pow(2).sum(0).cpu()

        return hook

    handles = [m.register_forward_pre_hook(grab(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in batches:
                count["mask"] = batch["attention_mask"].bool().to(device)
                count["tokens"] += int(count["mask"].sum())
                model(**{k: v.to(device) for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: (s / max(1, count["tokens"])).sqrt().float().to(device) for name, s in sums.items()}


def _masked_weight(m: torch.nn.Linear) -> torch.Tensor:
    from torch.nn.utils import prune as torch_prune

    return m.weight_orig * m.weight_mask if torch_prune.is_pruned(m) else m.weight


def bake_masks(model) -> None:
    """Fold every pruning mask into its weight: the model holds ordinary (zero-filled) tensors again."""
    import torch
    from torch.nn.utils import prune as torch_prune

    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and torch_prune.is_pruned(m):
            torch_prune.remove(m, "weight")


def sparsity_report(model, include=DEFAULT_INCLUDE, exclude=()) -> dict[str, Any]:
    """Zeros per pruned matrix and overall, and parameter counts, measured on the weights themselves."""
    layers = prunable_linears(model, include, exclude)
    per_layer, zeros, total = {}, 0, 0
    for name, m in layers.items():
        w = _masked_weight(m)
        z, n = int((w == 0).sum()), w.numel()
        per_layer[name] = round(z / n, 4)
        zeros, total = zeros + z, total + n
    params = sum(p.numel() for p in model.parameters())
    return {
        "pruned_matrices_sparsity": round(zeros / total, 4),
        "model_sparsity": round(zeros / params, 4),
        "parameters": params,
        "nonzero_parameters": params - zeros,
        "per_layer": per_layer,
    }


@dataclass(frozen=True, kw_only=True)
class ScheduledSparsity(PruneConfig):
    """What the methods that zero weights of the selected layers along a schedule share: the magnitude method here
    and the pattern method (`prune_inc`)."""

    sparsity: float = 0.5  # share of the selected weights set to zero at the end
    scope: str = "global"  # "global" (one threshold) or "layer" (one per matrix)
    schedule: str = "oneshot"  # "oneshot" or "cubic" (during recovery)
    ramp: float = 0.7  # cubic: share of the recovery steps over which sparsity rises to its target
    update_every: int = 50  # cubic: steps between mask updates
    include: tuple[str, ...] = DEFAULT_INCLUDE  # module-name globs of the nn.Linear layers to prune
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.scope not in ("global", "layer"):
            raise EdgeQAError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        if self.schedule not in ("oneshot", "cubic"):
            raise EdgeQAError(f"schedule must be 'oneshot' or 'cubic', got {self.schedule!r}")
        if not 0 < self.ramp <= 1:
            raise EdgeQAError(f"ramp must be in (0, 1], got {self.ramp!r}")

    def sparsity_scope(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.include, self.exclude

    def at_target(self, step: int, total: int) -> bool:
        return self.schedule != "cubic" or cubic_done(step, total, self.ramp, self.update_every)


@register_pruning
@dataclass(frozen=True, kw_only=True)
class MagnitudeConfig(ScheduledSparsity):
    """Unstructured magnitude pruning in PyTorch: see the module docstring."""

    method: ClassVar[str] = "magnitude"
    initial: float = 0.0  # cubic: sparsity applied at once before the first step (Zhu and Gupta's s_i)
    select: str = added_later("magnitude")  # which weights go inside each matrix: "magnitude", "input" or "obs"
    refit: bool = False  # least-squares refit of the kept weights whenever the sparsity rises
    refit_batches: int = 32  # refit and select: input: batches of 16 training windows to fit or measure on
    refit_to: str = "model"  # refit: match the dense "model" on its own inputs, or each dense "matrix" on today's

    def validate(self) -> None:
        super().validate()
        if self.initial and (self.schedule != "cubic" or self.initial > self.sparsity):
            raise EdgeQAError(f"initial sparsity {self.initial} needs schedule: cubic and at most sparsity")
        if self.select not in SELECTIONS:
            raise EdgeQAError(f"select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        if self.select == "obs" and not self.refit:
            raise EdgeQAError("select: obs chooses the mask inside the refit, from its statistics: set refit: true")
        if self.refit_to not in REFIT_TARGETS:
            raise EdgeQAError(f"refit_to must be one of {', '.join(REFIT_TARGETS)}, got {self.refit_to!r}")

    @property
    def data_windows(self) -> int:
        return 16 * self.refit_batches if self.refit or self.select == "input" else 0

    @property
    def why_data(self) -> str:
        return "refit fits the kept weights" if self.refit else "select: input measures the layers' inputs"

    def check_model(self, config) -> None:
        for name in prunable_linears(skeleton(config), self.include, self.exclude):
            if self.refit:
                block_of(name)

    def apply(self, model, trainset=None, gradual: bool = False) -> dict[str, Any]:
        layers = prunable_linears(model, self.include, self.exclude)
        first = self.initial if gradual and self.schedule == "cubic" else self.sparsity
        if self.needs_data and trainset is None:
            raise EdgeQAError(f"{self.why_data} on training windows; give training data")
        rms = self._input_rms(model, layers, trainset, seed=0) if self.select == "input" and first > 0 else None
        apply_magnitude_masks(layers, first, self.scope, rms)
        summary: dict[str, Any] = {"matrices": len(layers)}
        if self.refit and first > 0:
            batches = input_batches(trainset, self.refit_batches)
            summary["refit"] = refit_kept_weights(model, layers, batches, self.refit_to, choose=self.select == "obs")
        return summary

    def follow(self, student, trainset, step: int, total: int) -> None:
        """Cubic: every `update_every` steps, raise the masks to the schedule's sparsity (refitting what they keep
        when they grew by at least REFIT_MIN_RISE)."""
        import torch

        if self.schedule != "cubic" or not (step % self.update_every == 0 or step == total):
            return
        layers = prunable_linears(student, self.include, self.exclude)
        target = cubic_sparsity(step, total, self.sparsity, self.ramp, self.initial)
        last = cubic_sparsity(step - self.update_every, total, self.sparsity, self.ramp, self.initial)
        refit = self.refit and target - last >= REFIT_MIN_RISE
        if refit:
            for m in layers.values():  # weights pruned earlier become zeros: the refit's target is this model
                with torch.no_grad():
                    m.weight_orig.mul_(m.weight_mask)
        rms = None
        if self.select == "input" and target > last:  # after the ramp the mask keeps every nonzero weight
            rms = self._input_rms(student, layers, trainset, seed=step)
        apply_magnitude_masks(layers, target, self.scope, rms)
        if refit:
            batches = input_batches(trainset, self.refit_batches, seed=step)
            refit_kept_weights(student, layers, batches, self.refit_to, choose=self.select == "obs")

    def _input_rms(self, model, layers, trainset, seed: int) -> dict:
        return input_rms(model, layers, input_batches(trainset, self.refit_batches, seed=seed))

    def baked(self, student):
        import torch
        from torch.nn.utils import prune as torch_prune

        # A masked weight is `weight_orig * weight_mask`, recomputed before each forward pass; after a training
        # step it holds that step's autograd graph, which a copy cannot take (unless an inference pass since, as
        # an evaluation, replaced it). So it is made again, outside autograd, before the copy.
        with torch.no_grad():
            for m in student.modules():
                if isinstance(m, torch.nn.Linear) and torch_prune.is_pruned(m):
                    m.weight = m.weight_orig * m.weight_mask
        baked = copy.deepcopy(student)
        bake_masks(baked)
        return baked

    def describe(self, record: dict[str, Any]) -> str:
        return describe_magnitude(self, self.sparsity, "")


def describe_magnitude(cfg, sparsity: float, pattern: str) -> str:
    """'magnitude 4x1 80% (global, cubic from 20%, ...)': shared by the methods that zero weights by magnitude."""
    how = [cfg.scope, cfg.schedule]
    if getattr(cfg, "initial", 0):
        how[-1] += f" from {cfg.initial:.0%}"
    select = getattr(cfg, "select", "magnitude")
    if select != "magnitude":
        how.append(SELECTION_WORDS[select])
    if getattr(cfg, "refit", False):
        how.append(f"refit to {cfg.refit_to}")
    return f"magnitude{pattern and ' ' + pattern} {sparsity:.0%} ({', '.join(how)})"
