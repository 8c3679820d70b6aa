"""GPU check: train the distill-3l-gpu student for a few hundred steps on one GPU and score it there, inside one
15-minute device lease (start-up included), to show the GPU training path runs and what it costs.

The GPU machine gets only this checkout (64 MiB at most, no ../shared, no network), so the check has two halves:

1. Here, once: `make gpu-check` (= `python -m edgeqa.compress.gpu_check prepare --shared ../shared --out .gpu`) writes
   `.gpu/` (ignored by git, about 54 MB): the shared teacher with its weights in fp16 (made fp32 again on the
   device), its config and tokenizer files, and the SQuAD train (7.8 MB) and dev (1 MB) files.
2. On the device machine, from the repository root, through the device tool's `run`, carrying `.gpu`:
       command: bash scripts/gpu_check.sh        carry: [".gpu"]        timeout_s: 300
   (`python3 -m edgeqa.compress.gpu_check run --folder .gpu --out $OUT` after checking its Python packages; the
   machine's own torch, transformers, tokenizers, safetensors, numpy, PyYAML and tqdm serve, transformers 5 included).
   It trains the recipe's student with the recipe's settings (teacher layers 0, 2, 4; the intermediate stage, then
   the prediction stage; batch 32; bf16 by `precision: auto`) for 200 + 400 steps on the first 20,000 train
   questions, scores it on the first 1,000 dev questions on the GPU (at the end of training, and once more from
   the saved folder), and writes $OUT/gpu_check.json (steps and windows per second per stage and overall, F1,
   EM, device name, precision and why, seconds per phase, peak GPU memory) and $OUT/gpu_check.log. By estimate it
   takes one to two minutes after the machine's start, which leaves the lease time for a second run.

To know the device half runs, it runs here on the CPU in a tiny configuration (2 + 2 steps on 40 questions, 5 dev
questions; one to four minutes on these 2 shared cores, nearly all of it CPU steps of the real models):
    OUT=/tmp/gpu-check PYTHON=.venv/bin/python bash scripts/gpu_check.sh --allow-cpu --limit 40 --steps 2 2 \
        --eval-questions 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import yaml

from edgeqa.bench.engines import load_tokenizer, load_torch_qa_model, model_input_names
from edgeqa.bench.files import EdgeQAError, atomic_dir, write_json
from edgeqa.bench.squad import load_squad
from edgeqa.compress.train import distill
from edgeqa.compress.train_config import DistillConfig, Hooks
from edgeqa.compress.train_eval import score_student

log = logging.getLogger(__name__)

RECIPE = Path("recipes") / "distill-3l-gpu.yaml"  # in the checkout both halves run from (a wheel has no recipes)
TEACHER = Path("models") / "minilm-l6-h384-squad1"
TRAIN = Path("data") / "squad" / "train-v1.1.rebuilt.json.gz"
DEV = Path("data") / "squad" / "dev-v1.1.json.gz"
WEIGHTS = "model.safetensors"
MAX_MB = 60.0  # what may travel besides the checkout itself, under the device tool's 64 MiB
RESULT = "gpu_check.json"


# --- here: what travels ------------------------------------------------------------------------------------------


def prepare(shared: Path, out: Path) -> dict[str, Any]:
    """Write `out`: the teacher with fp16 weights and its other files, and the SQuAD train and dev files."""
    teacher = shared / TEACHER
    for path in (teacher / WEIGHTS, teacher / "config.json", shared / TRAIN, shared / DEV):
        if not path.exists():
            raise EdgeQAError(f"{path}: missing; give the shared folder with --shared")
    with atomic_dir(out) as tmp:
        (tmp / "teacher").mkdir()
        _convert_weights(teacher / WEIGHTS, tmp / "teacher" / WEIGHTS, torch.float16)
        for f in teacher.iterdir():
            if f.is_file() and f.name != WEIGHTS and f.suffix in (".json", ".txt", ".model"):
                shutil.copy2(f, tmp / "teacher" / f.name)
        shutil.copy2(shared / TRAIN, tmp / "train.json.gz")
        shutil.copy2(shared / DEV, tmp / "dev.json.gz")
        sizes = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        total = sum(sizes.values())
        if total / 1e6 > MAX_MB:
            raise EdgeQAError(f"{out}: {total / 1e6:.1f} MB would not travel with the checkout (at most {MAX_MB} MB)")
        manifest = {"source": str(shared), "files": sizes, "total_mb": round(total / 1e6, 1)}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _convert_weights(src: Path, dest: Path, dtype: torch.dtype) -> None:
    """Floating-point tensors to `dtype` (fp16 halves what travels; BERT weights are far inside its range)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(src)
    out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    bad = [k for k, v in out.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise EdgeQAError(f"{src}: {', '.join(bad[:3])} do not fit {dtype}")
    save_file(out, str(dest), metadata={"format": "pt"})


# --- there: the check --------------------------------------------------------------------------------------------


def teacher_fp32(folder: Path, dest: Path) -> Path:
    """The carried teacher as an fp32 folder: loaded like any model folder, whatever dtype a library defaults to."""
    dest.mkdir(parents=True, exist_ok=True)
    _convert_weights(folder / WEIGHTS, dest / WEIGHTS, torch.float32)
    for f in folder.iterdir():
        if f.name != WEIGHTS:
            shutil.copy2(f, dest / f.name)
    return dest


def distill_settings(recipe: Path, train: Path, steps: tuple[int, ...], limit: int, eval_questions: int):
    """The recipe's distill step, shortened: its student, losses, batch and learning rates, with `steps` per
    stage on the first `limit` train questions, evaluated on `eval_questions` dev questions at each predicting
    stage's end only."""

    doc = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    params = next(s["distill"] for s in doc["steps"] if "distill" in s)
    params = {k: v for k, v in params.items() if k not in ("name", "from")}
    if len(steps) != len(params["stages"]):
        raise EdgeQAError(f"{recipe}: {len(params['stages'])} stages, but {len(steps)} step counts were given")
    params["stages"] = [{**s, "max_steps": n} for s, n in zip(params["stages"], steps, strict=True)]
    params["train"] = {
        **params["train"],
        "data": str(train),
        "limit": limit,
        "eval_every": 0,
        "eval_limit": eval_questions,
        "checkpoint_every": max(steps),  # once per stage: the check times training, not checkpoints
    }
    return DistillConfig.from_dict(params)


class _Clock:
    """Training hooks that time each stage from its first step's end to its last (the first step warms up)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first_stage_at: float | None = None
        self.marks: dict[int, dict[str, float]] = {}

    def hooks(self):
        return Hooks(start_stage=self._start_stage, after_step=self._after_step)

    def _start_stage(self, student, optimizer, stage: int, total: int) -> None:
        if self.first_stage_at is None:
            self.first_stage_at = time.perf_counter()

    def _after_step(self, student, stage: int, step: int, total: int) -> None:
        if step in (1, total):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.setdefault(stage, {})["first" if step == 1 else "last"] = time.perf_counter()


def run_check(
    folder: Path,
    out: Path,
    steps: tuple[int, ...] = (200, 400),
    limit: int = 20000,
    eval_questions: int = 1000,
    allow_cpu: bool = False,
    recipe: Path = RECIPE,
) -> dict[str, Any]:
    """Train and score on the GPU; the result is returned and written to out/gpu_check.json."""

    if not torch.cuda.is_available() and not allow_cpu:
        raise EdgeQAError("no CUDA device: this is the GPU check (--allow-cpu runs it on the CPU, to test it)")
    for name in ("teacher", "train.json.gz", "dev.json.gz"):
        if not (folder / name).exists():
            raise EdgeQAError(f"{folder / name}: missing; run `make gpu-check` where ../shared is, and carry .gpu")
    if not recipe.is_file():
        raise EdgeQAError(f"{recipe}: no such recipe; run from the repository root, or give --recipe")
    result = _environment()
    _write(out, {**result, "status": "started"})
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="edgeqa-gpu-check-") as scratch:
        work = Path(scratch)
        teacher = teacher_fp32(folder / "teacher", work / "teacher")
        cfg = distill_settings(recipe, folder / "train.json.gz", steps, limit, eval_questions)
        best = distill(cfg, teacher, work / "student", str(folder / "dev.json.gz"), work / "cache", hooks=clock.hooks())
        trained_at = time.perf_counter()
        result.update(_training_figures(work / "student", cfg, clock))
        result.update(_final_eval(best, cfg, folder / "dev.json.gz", result["training"]["device"]))
    result["seconds"] = {
        "before_training": round((clock.first_stage_at or trained_at) - clock.start, 1),
        "training_with_evaluation": round(trained_at - (clock.first_stage_at or trained_at), 1),
        "total": round(time.perf_counter() - clock.start, 1),
    }
    result["status"] = "done"
    _write(out, result)
    return result


def _environment() -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
        env["cuda"] = torch.version.cuda
    return env


def _training_figures(work: Path, cfg, clock: _Clock) -> dict[str, Any]:
    """Per stage: steps and windows per second over its steps after the first (wall clock, device synchronised),
    and the median of the loop's own windows-per-second log entries."""
    info = json.loads((work / "training.json").read_text())
    history = [json.loads(x) for x in (work / "train_log.jsonl").read_text().splitlines()]
    batch = cfg.train.batch_size
    stages, timed = [], []  # timed: (steps after the first, their seconds) of each stage the clock timed
    for si, stage in enumerate(cfg.stages):
        marks, n = clock.marks.get(si, {}), info["steps"][si]
        seconds = marks.get("last", 0.0) - marks.get("first", 0.0)
        if n > 1 and seconds > 0:
            timed.append((n - 1, seconds))
        logged = [h["windows_per_s"] for h in history if h.get("stage") == si and "windows_per_s" in h][1:]
        stages.append(
            {
                "loss": stage.loss.to_dict(),
                "steps": n,
                "steps_per_s": round((n - 1) / seconds, 2) if n > 1 and seconds > 0 else None,
                "windows_per_s": round((n - 1) * batch / seconds, 1) if n > 1 and seconds > 0 else None,
                "logged_windows_per_s_median": round(statistics.median(logged), 1) if logged else None,
            }
        )
    total_steps, total_seconds = sum(n for n, _ in timed), sum(s for _, s in timed)
    figures: dict[str, Any] = {
        "training": {k: info[k] for k in ("device", "precision", "bf16", "windows", "questions", "train_seconds")},
        "stages": stages,
        "steps_per_s": round(total_steps / total_seconds, 2) if total_seconds else None,
        "windows_per_s": round(total_steps * batch / total_seconds, 1) if total_seconds else None,
        "in_training_eval": info["best"],
    }
    if torch.cuda.is_available():
        figures["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return figures


def _final_eval(best: Path, cfg, dev: Path, device: str) -> dict[str, Any]:
    """The saved student, loaded again and scored on the device: the folder holds what was trained."""

    student = load_torch_qa_model(best).to(device)
    examples = load_squad(dev, cfg.train.eval_limit).examples
    t = time.perf_counter()
    metrics = score_student(student, load_tokenizer(best), examples, model_input_names(student), cfg.train, device)
    seconds = time.perf_counter() - t
    return {
        "f1": metrics["f1"],
        "exact": metrics["exact"],
        "eval_questions": metrics["questions"],
        "eval_seconds": round(seconds, 2),
        "eval_questions_per_s": round(metrics["questions"] / seconds, 1),
    }


def _write(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RESULT, result)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="here: write the folder that travels (teacher in fp16, SQuAD files)")
    p.add_argument("--shared", default=os.environ.get("EDGEQA_SHARED", "../shared"))
    p.add_argument("--out", default=".gpu")
    r = sub.add_parser("run", help="there: train and score on the GPU, write gpu_check.json")
    r.add_argument("--folder", default=".gpu", help="what `prepare` wrote")
    r.add_argument("--out", default=os.environ.get("OUT", "runs/gpu-check"), help="result folder (default: $OUT)")
    r.add_argument("--steps", type=int, nargs="+", default=[200, 400], help="steps of each stage")
    r.add_argument("--limit", type=int, default=20000, help="first N train questions")
    r.add_argument("--eval-questions", type=int, default=1000)
    r.add_argument("--allow-cpu", action="store_true", help="run without CUDA (to test this script)")
    r.add_argument("--recipe", default=str(RECIPE), help="the recipe whose distill step is trained")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "prepare":
        manifest = prepare(Path(args.shared), Path(args.out))
        print(json.dumps(manifest, indent=1))
        print(f"wrote {args.out}: {manifest['total_mb']} MB; carry it to the device run (see compress/gpu_check.py)")
        return 0
    out = Path(args.out)
    try:
        result = run_check(
            Path(args.folder),
            out,
            tuple(args.steps),
            args.limit,
            args.eval_questions,
            args.allow_cpu,
            Path(args.recipe),
        )
    except BaseException as e:  # the device tool returns $OUT even then: say there what went wrong
        failed = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        _write(out, {**_environment(), **failed})
        raise
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
