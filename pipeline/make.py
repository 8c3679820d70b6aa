"""The deploy-side steps: export, fuse, quantize, PyTorch int8 and the mobile format, each made once per identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeqa.bench.files import EdgeQAError, write_json
from edgeqa.bench.qa import QAConfig
from edgeqa.pipeline.context import Run
from edgeqa.pipeline.recipe import ExportStep, FuseStep, MobileStep, QuantizeStep, TorchInt8Step
from edgeqa.pipeline.records import make_once


def window_identity(qa: QAConfig) -> dict[str, Any]:
    """The QA window as part of a model's identity where windows shape the model (calibration, pruning data); the
    default window is left out, so models made before the recipe's `qa:` section keep their identity."""
    return {} if qa == QAConfig() else {"qa": qa.to_dict()}


def _parity(run: Run) -> dict[str, Any]:
    p = run.recipe.parity
    return {"parity_examples": run.parity_examples, "tolerance": p.tolerance,
            "min_same_answer_share": p.min_same_answer_share, "qa_cfg": run.recipe.qa}  # fmt: skip


def step_export(run: Run, step: ExportStep) -> None:
    from edgeqa.export.onnx import export_onnx

    src = run.source(step.source)
    out = run.model_dir(step.name)
    make_once(out, step.kind, {"from": str(src.path), "opset": step.opset},
              lambda out: export_onnx(src.path, out, step.opset, **_parity(run)))  # fmt: skip
    run.add(step.name)


def step_fuse(run: Run, step: FuseStep) -> None:
    from edgeqa.export.optimize import fuse

    src = run.source(step.source)
    make_once(run.model_dir(step.name), step.kind, {"from": str(src.path), "fusions": list(step.fusions)},
              lambda out: fuse(src.path, out, fusions=step.fusions, **_parity(run)))  # fmt: skip
    run.add(step.name)


def step_quantize(run: Run, step: QuantizeStep) -> None:
    from edgeqa.export.quantize import AUTO, preset_record, quantize

    src = run.source(step.source)
    cfg = step.config
    if cfg.mode == "static" and not run.recipe.calibration_data:
        raise EdgeQAError(f"{run.recipe.path}:{step.line}: static quantization needs calibration.data in the recipe")
    info = preset_record(step.preset)
    # The preset chosen, not "auto", is the identity: the same recipe on another machine class makes another model.
    settings = {"from": str(src.path), "preset": info["chosen"], **cfg.to_dict()}
    if cfg.mode == "static":
        settings.update(window_identity(run.recipe.qa))
    make_once(
        run.model_dir(step.name),
        step.kind,
        settings,
        lambda out: quantize(
            src.path,
            out,
            cfg,
            run.recipe.calibration_data,
            qa_cfg=run.recipe.qa,
            parity_examples=run.parity_examples,
            preset_info=info,
        ),  # fmt: skip
        remake_on_change=info["asked"] == AUTO,
    )
    run.add(step.name)


def step_torch_int8(run: Run, step: TorchInt8Step) -> None:
    """PyTorch dynamic int8 of nn.Linear, applied at load: a variant without an artefact of its own."""
    src = run.source(step.source)
    if src.torch_int8 or (src.path / "model.onnx").exists():
        raise EdgeQAError(f"{run.recipe.path}:{step.line}: torch_int8 needs a PyTorch fp32 variant as 'from'")
    run.add(step.name, torch_int8=True, path=src.path)


def step_mobile(run: Run, step: MobileStep) -> None:
    from edgeqa.bench.engines import load_qa_model
    from edgeqa.bench.squad import load_squad
    from edgeqa.export.mobile import convert_to_ort

    src = run.source(step.source)

    def make(out: Path) -> None:
        convert_to_ort(src.path, out)
        example = load_squad(run.recipe.eval.data, 1).examples[0]
        model = load_qa_model(out, run.recipe.bench.threads)
        answer = model.answer([example], run.recipe.qa, progress=False)[example.id]
        write_json(out / "smoke.json", {"question": example.question, "answer": answer.text, "gold": example.answers})

    make_once(run.model_dir(step.name), step.kind, {"from": str(src.path)}, make)
    run.add(step.name)
