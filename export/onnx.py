"""PyTorch QA folder -> ONNX folder (model.onnx + config + tokenizer), always followed by a parity check.

Exporter choice: `torch.onnx.export(..., dynamo=False)`, the TorchScript exporter, although torch warns that it is
legacy. Its BERT graphs are the ones onnxruntime.transformers' fusion rules were written against: from the dynamo
exporter's graph they fuse no Attention (so int8 gets no QAttention) nor EmbedLayerNormalization, and at opset 17
the dynamo exporter writes a graph ONNX Runtime refuses. docs/exporter.md has the comparison and its commands.
optimum-onnx's `main_export` wraps the same exporter behind several layers of task/config classes; we keep it only
as the comparison baseline (bench/compare_optimum.py).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeqa.bench.engines import ONNX_NAME, load_qa_model, load_tokenizer, load_torch_qa_model, model_input_names
from edgeqa.bench.files import EdgeQAError, atomic_dir, write_json
from edgeqa.bench.qa import QAConfig, best_spans, tokenize
from edgeqa.bench.squad import SquadExample

log = logging.getLogger(__name__)

CONFIG_FILES = ("config.json",)
# LayerNormalization and the attention fusions need opset 14 or later (LayerNormalization is an opset-17 op; older
# opsets export it as its parts, which the fusions still match from 14 on).
MIN_OPSET = 14


@dataclass(frozen=True)
class ParityResult:
    max_abs_diff: float  # over real (non-padding) positions of start and end logits
    same_answer_share: float  # share of questions whose answer text is identical
    questions: int
    tolerance: float
    min_same_answer_share: float
    windows: int = 0  # token windows compared: the questions cut by the QA window below
    qa: dict | None = None  # the QA window (QAConfig.to_dict()) the windows and answers were made with

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.same_answer_share >= self.min_same_answer_share

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def export_onnx(
    model_dir: str | Path,
    out_dir: str | Path,
    opset: int = 17,
    parity_examples: list[SquadExample] | None = None,
    tolerance: float = 1e-3,
    min_same_answer_share: float = 0.995,
    qa_cfg: QAConfig = QAConfig(),
) -> Path:
    """Export a transformers QA folder to `out_dir/model.onnx` with dynamic batch and sequence axes.

    With `parity_examples`, the export is checked against PyTorch before it is moved into place: past the
    tolerance it raises and leaves nothing behind; otherwise parity.json records the numbers.
    """
    import torch

    if opset < MIN_OPSET:
        raise EdgeQAError(f"opset must be at least {MIN_OPSET}, got {opset}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = load_torch_qa_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    names = list(model_input_names(model))
    sample = tokenizer(["what is it?"] * 2, ["it is a small example context."] * 2, return_tensors="pt")
    args = tuple(sample[n] if n in sample else torch.zeros_like(sample["input_ids"]) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update({"start_logits": {0: "batch", 1: "sequence"}, "end_logits": {0: "batch", 1: "sequence"}})
    with atomic_dir(out_dir) as tmp:
        with torch.inference_mode():
            torch.onnx.export(
                model,
                args,
                str(tmp / ONNX_NAME),
                input_names=names,
                output_names=["start_logits", "end_logits"],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,  # dynamo's graph loses the Attention fusion and int8 speed: docs/exporter.md
            )
        copy_model_metadata(model_dir, tmp)
        if parity_examples:
            result = check_parity(model_dir, tmp, parity_examples, tolerance, min_same_answer_share, cfg=qa_cfg)
            write_parity(tmp, result, model_dir)
    log.info("exported %s -> %s", model_dir, out_dir / ONNX_NAME)
    return out_dir


def copy_model_metadata(src: Path, dst: Path) -> None:
    """Config and tokenizer files beside model.onnx, so the folder loads like an Optimum one."""
    load_tokenizer(src).save_pretrained(dst)
    for name in CONFIG_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)  # not copy2: shared files are read-only


def check_parity(
    reference: str | Path,
    candidate: str | Path,
    examples: list[SquadExample],
    tolerance: float = 1e-3,
    min_same_answer_share: float = 0.995,
    threads: int | None = None,
    cfg: QAConfig = QAConfig(),
    raise_on_failure: bool = True,
) -> ParityResult:
    """Run both models on the same real windows; fail loudly when logits or answers drift past the tolerance."""
    ref_model = load_qa_model(reference, threads)
    cand_model = load_qa_model(candidate, threads)
    features = tokenize(ref_model.tokenizer, [e.question for e in examples], [e.context for e in examples], cfg)
    ref_start, ref_end = ref_model.logits(features, batch_size=16, progress=False)
    cand_start, cand_end = cand_model.logits(features, batch_size=16, progress=False)
    if ref_start.shape != cand_start.shape:
        raise EdgeQAError(f"{candidate}: output shape {cand_start.shape} differs from {reference}'s {ref_start.shape}")
    valid = np.isfinite(ref_start)
    diff = max(
        float(np.abs(ref_start[valid] - cand_start[valid]).max()),
        float(np.abs(ref_end[valid] - cand_end[valid]).max()),
    )
    contexts = [e.context for e in examples]
    ref_answers = best_spans(ref_start, ref_end, features, contexts, cfg)
    cand_answers = best_spans(cand_start, cand_end, features, contexts, cfg)
    same = sum(a.text == b.text for a, b in zip(ref_answers, cand_answers, strict=True)) / len(examples)
    windows = len(features.input_ids)
    result = ParityResult(diff, same, len(examples), tolerance, min_same_answer_share, windows, cfg.to_dict())
    log.info("parity %s vs %s: max |logit diff| %.2e, same answers %.2f%%", candidate, reference, diff, 100 * same)
    if raise_on_failure and not result.ok:
        raise EdgeQAError(
            f"{candidate}: parity check failed against {reference}: max |logit diff| {diff:.3g} "
            f"(tolerance {tolerance:g}), same answers {100 * same:.2f}% (need {100 * min_same_answer_share:.1f}%)"
        )
    return result


def write_parity(out_dir: Path, result: ParityResult, reference: str | Path) -> None:
    write_json(out_dir / "parity.json", {"reference": str(reference), **result.to_dict()})
