"""`edgeqa shapes`: a teacher's candidate shapes made as the recipes make their models, ready to be timed.

Each shape is cut from the teacher (`compress.prune_structured.cut_to_shape`), exported, attention-fused and
quantized to int8 with the preset `auto` picks for this CPU, as the front recipe makes its models; the folder keeps
only the int8 models (and the teacher's), so that it can be copied to the machine it is for and timed there with the
runtime install (`edgeqa shapes --time DIR`). Made shapes are kept, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tqdm import tqdm

from edgeqa.bench.engines import load_tokenizer, load_torch_qa_model
from edgeqa.bench.files import EdgeQAError, atomic_dir, check_writable_dir, read_json, write_json
from edgeqa.bench.shapes import MANIFEST, TEACHER_INT8, Shape
from edgeqa.compress.prune_structured import cut_to_shape
from edgeqa.export.onnx import export_onnx
from edgeqa.export.optimize import fuse
from edgeqa.export.quantize import preset, preset_record, quantize

log = logging.getLogger(__name__)

FUSIONS = ("attention",)  # as the front recipe fuses before int8 (docs/results/front.md: more fusions were slower)


def teacher_shape(folder: str | Path) -> Shape:
    config = read_json(Path(folder) / "config.json", "model config")
    try:
        return Shape(config["num_hidden_layers"], config["num_attention_heads"], config["intermediate_size"])
    except KeyError as e:
        raise EdgeQAError(f"{folder}/config.json: no {e.args[0]}; shapes need a BERT-layout teacher") from None


SHAPE_RECORD = "shape.json"  # in each made model's folder: its shape and parameters; written last, with the model


def _make_one(teacher_model, tokenizer, shape: Shape | None, work: Path, out: Path, preset_name: str) -> dict:
    """One int8 model in `out` (the teacher's own when `shape` is None), moved into place whole with its record."""
    model = teacher_model if shape is None else cut_to_shape(teacher_model, shape.layers, shape.heads, shape.ffn)
    shutil.rmtree(work, ignore_errors=True)
    model.save_pretrained(work / "pt")
    tokenizer.save_pretrained(work / "pt")
    export_onnx(work / "pt", work / "onnx")
    fuse(work / "onnx", work / "fused", fusions=FUSIONS)
    layers = model.base_model.encoder.layer  # heads as the layers have them: prune_heads leaves the config's count
    record = {"name": out.name, "layers": len(layers), "heads": layers[0].attention.self.num_attention_heads,
              "ffn": model.config.intermediate_size,
              "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    with atomic_dir(out) as tmp:
        quantize(work / "fused", tmp, preset(preset_name), preset_info=preset_record(preset_name))
        write_json(tmp / SHAPE_RECORD, record)
    shutil.rmtree(work, ignore_errors=True)
    return record


def make_shapes(teacher: str | Path, out: str | Path, shapes: list[Shape], preset_name: str = "auto") -> Path:
    """The int8 teacher and one int8 model per shape in `out`, with out/manifest.json listing them; models made
    by an earlier call (a killed one too) are kept."""
    teacher, out = Path(teacher).absolute(), check_writable_dir(out)
    if (out / MANIFEST).exists() and read_json(out / MANIFEST, "shapes manifest").get("teacher") != str(teacher):
        raise EdgeQAError(f"{out} holds the shapes of another teacher; give another --out")
    full = teacher_shape(teacher)
    too_big = [s.name for s in shapes if not s.fits(full)]
    if too_big:
        raise EdgeQAError(f"shapes larger than the teacher {teacher} ({full.name}): {', '.join(too_big)}")
    model, tokenizer = load_torch_qa_model(teacher), load_tokenizer(teacher)
    entries = []
    for shape in tqdm([None, *shapes], desc="making shapes", unit="shape"):
        folder = out / (TEACHER_INT8 if shape is None else shape.name)
        if (folder / SHAPE_RECORD).exists():
            record = read_json(folder / SHAPE_RECORD, "shape record")
        else:
            log.info("making %s", folder.name)
            record = _make_one(model, tokenizer, shape, out / ".work" / folder.name, folder, preset_name)
        if shape is not None:
            entries.append(record)
    shutil.rmtree(out / ".work", ignore_errors=True)
    write_json(out / MANIFEST, {"teacher": str(teacher), "teacher_shape": full.name,
                                "preset": preset_record(preset_name), "shapes": entries})  # fmt: skip
    return out
