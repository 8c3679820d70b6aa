"""Kills at random: a recipe with every step kind, SIGKILLed again and again at seeded moments and resumed each time,
ends with the models, predictions and scores of a run never stopped, and with nothing half-written under runs/.

The killed runs are children of a forkserver that imported torch, transformers and edgeqa once, so a restart costs
milliseconds instead of seconds of imports. Each child leads its own process group, so a kill also takes the timing
subprocesses it started. Each kill falls at a seeded random moment a few milliseconds after the run wrote something
that no earlier run had written (a checkpoint of a new step, a model folder, scores, timings): so every run gets
further than the last before it dies, and many kills fall inside the next write, where a folder or file written in
place would be caught half-made.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import re
import shutil
import signal
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import TOY_QAS, make_tiny_qa_model, write_squad

SEED = 28
MIN_KILLS = 20
MAX_KILLS = 40
PRELOAD = [
    "torch", "transformers", "onnxruntime", "onnx", "matplotlib.pyplot", "edgeqa.pipeline.run", "edgeqa.export.onnx",
    "edgeqa.export.optimize", "edgeqa.export.quantize", "edgeqa.export.mobile", "edgeqa.compress.train",
    "edgeqa.compress.prune", "edgeqa.bench.evaluate", "edgeqa.bench.latency", "edgeqa.bench.report",
    "transformers.models.auto.modeling_auto", "transformers.models.bert.modeling_bert", "transformers.generation.utils",
]  # fmt: skip
# Files that record a making (its id, its seconds, windows per second) rather than what was made.
RECORDS = {"step.json", "training.json", "train_log.jsonl"}
# ONNX Runtime writes a .ort flatbuffer's tables in hash order: two conversions of one model differ in some bytes
# (763 of 58,688 here), so the mobile model is compared by its answers (eval/mobile/predictions.json) instead.
UNORDERED = {"model.ort"}
BENCHED = ("fused", "int8-static", "int8-dyn", "mobile")
PHASES = {"export": "export", "fuse": "export", "mobile": "mobile", "quantize": "quantize", "distill": "training",
          "prune": "training", "report": "report"}  # fmt: skip


def _child(recipe: str, out: str, log: str) -> None:
    """One `edgeqa run` in a forkserver child: its own process group, its output in `log`."""
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    import torch

    from edgeqa.pipeline.run import run_recipe

    torch.set_num_threads(1)
    run_recipe(recipe, out)


def _recipe(tmp_path: Path) -> Path:
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2, hidden=32, heads=4)
    train = write_squad(tmp_path / "train.json", TOY_QAS * 4)
    dev = write_squad(tmp_path / "dev.json", TOY_QAS)
    training = (f"train: {{data: {train}, batch_size: 4, precision: fp32, checkpoint_every: 1, eval_every: 0}}\n"
                "stages: [{loss: {hard: 0.5, soft: 0.5}, max_steps: 6, lr: 1.0e-3}]")  # fmt: skip
    steps = textwrap.dedent("""\
        - distill: {name: student, student: {layers: [0]}, TRAINING}
        - prune: {name: pruned, from: student, teacher: pytorch-fp32, sparsity: 0.5, TRAINING}
        - export: {name: onnx, from: pruned}
        - fuse: {name: fused, from: onnx}
        - quantize: {name: int8-dyn, from: fused}
        - quantize: {name: int8-static, from: onnx, mode: static, calibration_samples: 3}
        - torch_int8: {name: torch-int8, from: pruned}
        - mobile: {name: mobile, from: int8-dyn}
        - bench: {variants: [BENCHED]}
        - report: {reference: fused}
        """).replace("TRAINING", textwrap.indent(training, "  ").strip().replace("\n  ", ", "))
    steps = steps.replace("BENCHED", ", ".join(BENCHED))
    head = (f"name: k\nmodel: {teacher}\neval: {{data: {dev}, batch_size: 4}}\ncalibration: {{data: {dev}}}\n"
            "qa: {max_length: 48, doc_stride: 16}\nparity: {limit: 3}\n"
            "bench: {threads: 1, batch_sizes: [1], seq_lens: [32], warmup: 1, repeats: 2}\n")  # fmt: skip
    path = tmp_path / "k.yaml"
    path.write_text(head + "steps:\n" + textwrap.indent(steps, "  "))
    return path


def _artefacts(root: Path) -> set[tuple[str, int]]:
    """What a run has written so far: each model folder, every other file by its path, and each checkpoint by its
    path and modification time (rewritten in place at every step)."""
    found = set()
    for top, dirs, files in os.walk(root):  # walk errors (a folder renamed while we look) are skipped
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(top, name)
            try:
                if name.startswith("."):
                    continue
                rel = path.relative_to(root)
                if rel.parts[0] == "models" or rel.parent.name == "best":  # a folder lands whole: one artefact
                    found.add((str(rel.parent), 0))
                else:
                    found.add((str(rel), path.stat().st_mtime_ns if name == "checkpoint.pt" else 0))
            except FileNotFoundError:  # replaced while we looked
                pass
    return found


def _phase(log: Path, start: int) -> str:
    """Where a killed run was: the last step or bench phase its log names since `start`."""
    phase = "starting"
    for line in log.read_text(errors="replace")[start:].splitlines():
        if m := re.search(r"step \d+/\d+: (\w+)", line):
            phase = PHASES.get(m[1], m[1])
        elif re.search(r"edgeqa\.pipeline\.steps\.bench_step: scoring ", line):
            phase = "scoring"
        elif re.search(r"edgeqa\.bench\.latency: timing ", line):
            phase = "timing"
    return phase


def _check_whole(root: Path) -> dict[str, str]:
    """What a run left when it was killed is whole: every model folder carries its record (they land in one
    rename) and every JSON file parses. Returns each model folder's making id."""
    made = {}
    for folder in (root / "models").iterdir() if (root / "models").is_dir() else ():
        if folder.name.startswith("."):
            continue
        assert (folder / "step.json").exists(), f"{folder} is in place without its step record: written in place"
        made[folder.name] = json.loads((folder / "step.json").read_text())["made"]
    for path in root.rglob("*.json"):
        if not any(part.startswith(".") for part in path.relative_to(root).parts):
            json.loads(path.read_text())  # half a JSON file fails here
    return made


def _files(root: Path, sub: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / sub).rglob("*"))
            if p.is_file() and p.name not in RECORDS | UNORDERED}  # fmt: skip


@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _start(ctx, recipe: Path, out: Path, log: Path):
    proc = ctx.Process(target=_child, args=(str(recipe), str(out), str(log)))
    proc.start()
    return proc


def test_a_recipe_killed_at_random_resumes_to_the_same_models_and_scores(tmp_path, forkserver):
    recipe = _recipe(tmp_path)
    runs, root = tmp_path / "runs", tmp_path / "runs" / "k"

    # The run never stopped, made in the same folder the killed runs will use (records name their paths), then
    # moved aside.
    whole = _start(forkserver, recipe, runs, tmp_path / "whole.log")
    whole.join(600)
    assert whole.exitcode == 0, (tmp_path / "whole.log").read_text()[-3000:]
    shutil.move(runs, tmp_path / "whole")

    rng = random.Random(SEED)
    log = tmp_path / "killed.log"
    log.touch()
    kills: list[str] = []  # where each kill landed
    first_made: dict[str, str] = {}
    seen: set[tuple[str, int]] = set()  # what runs wrote so far: a kill waits for something none had written
    resumed: set[tuple[str, int, int]] = set()
    while True:
        seen |= _artefacts(root)
        at = len(log.read_text(errors="replace"))
        proc = _start(forkserver, recipe, runs, log)
        if len(kills) >= MAX_KILLS:
            proc.join(600)
            break
        # A seeded random moment, up to 30 ms after the run has written something no run wrote before: every run
        # gets further than the last, and a kill often falls inside the next write.
        delay = rng.uniform(0.0, 0.03)
        while not (_artefacts(root) - seen) and proc.is_alive():
            time.sleep(0.005)
        time.sleep(delay)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # not yet the leader of its group (so no subprocesses), or ended
            proc.kill()
        proc.join()
        if proc.exitcode != -signal.SIGKILL:
            break
        kills.append(_phase(log, at))
        made = _check_whole(root)
        for checkpoint in (root / "work").glob("*/checkpoint.pt"):  # where a resumed training must start
            if not (root / "models" / checkpoint.parent.name).exists():
                state = torch.load(checkpoint, weights_only=False)
                resumed.add((checkpoint.parent.name, state["stage"], state["step"]))
        for name, made_id in made.items():  # a model finished before a kill is never made again: resume works
            assert first_made.setdefault(name, made_id) == made_id, f"{name} was made again after it was finished"
    assert proc.exitcode == 0, log.read_text()[-3000:]

    where = Counter(kills)
    summary = f"{len(kills)} kills: {dict(where)}"
    print(summary)
    assert len(kills) >= MIN_KILLS, summary
    assert {"export", "quantize", "training", "scoring", "timing"} <= set(where), summary

    # Each training went on from every checkpoint a kill left, not from its start.
    for name, stage, step in resumed:
        starts = json.loads((root / "models" / name / "training.json").read_text())["starts"]
        assert {"stage": stage, "step": step} in [{"stage": s["stage"], "step": s["step"]} for s in starts], name
    assert {name for name, _, step in resumed if step > 0} == {"student", "pruned"}, resumed

    # The same models, byte for byte, the same predictions and scores, and the same report rows but for timings.
    whole_root = tmp_path / "whole" / "k"
    for sub in ("models", "eval"):
        a, b = _files(whole_root, sub), _files(root, sub)
        assert a.keys() == b.keys()
        differ = [name for name in a if a[name] != b[name] and not name.endswith("metrics.json")]
        assert not differ, f"differ from the run never stopped: {differ}"
    for metrics in (root / "eval").glob("*/metrics.json"):
        ours, theirs = (json.loads(p.read_text()) for p in (metrics, whole_root / metrics.relative_to(root)))
        assert [ours[k] for k in ("exact_match", "f1", "total")] == [theirs[k] for k in ("exact_match", "f1", "total")]
    rows = [json.loads((r / "report.json").read_text())["rows"] for r in (whole_root, root)]
    assert [[(r["name"], r["exact_match"], r["f1"]) for r in rs] for rs in rows][0] == [
        (r["name"], r["exact_match"], r["f1"]) for r in rows[1]
    ]

    # Nothing temporary or half-written is left anywhere under runs/.
    left = [p for p in runs.rglob("*") if p.name.startswith(".") or p.name.endswith((".tmp", ".partial.npy"))]
    assert not left, left
