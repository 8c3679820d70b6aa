"""The GPU check's pieces that run here, each against values worked out by hand: the recipe shortened for the
lease, the per-stage rates from a clock and the loop's records, and what may travel to the device machine. The
device half itself runs end to end on the CPU in test_distill_runs.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO, TOY_QAS, make_tiny_qa_model, write_squad
from edgeqa.bench.files import EdgeQAError
from edgeqa.compress import gpu_check

RECIPE = REPO / gpu_check.RECIPE  # the tests run from any folder


def test_the_recipe_is_shortened_to_the_steps_asked_and_keeps_its_settings(tmp_path):
    cfg = gpu_check.distill_settings(RECIPE, tmp_path / "train.json.gz", (200, 400), 20000, 1000)
    # recipes/distill-3l-gpu.yaml: layers 0, 2, 4; batch 32; two stages at lr 2e-4 and 1e-4
    assert cfg.student.layers == (0, 2, 4) and cfg.train.batch_size == 32 and cfg.train.freeze_word_embeddings
    assert [(s.max_steps, s.lr) for s in cfg.stages] == [(200, 2.0e-4), (400, 1.0e-4)]
    assert (cfg.train.data, cfg.train.limit) == (str(tmp_path / "train.json.gz"), 20000)
    assert (cfg.train.eval_every, cfg.train.eval_limit, cfg.train.checkpoint_every) == (0, 1000, 400)
    assert cfg.stages[0].loss.hidden == 1.0 and cfg.stages[1].loss.soft == 0.8
    with pytest.raises(EdgeQAError, match="2 stages, but 3 step counts were given"):
        gpu_check.distill_settings(RECIPE, tmp_path / "t", (1, 2, 3), 10, 5)


def test_stage_rates_count_the_steps_after_the_first(tmp_path):
    cfg = gpu_check.distill_settings(RECIPE, tmp_path / "t", (5, 11), 100, 10)
    info = {"steps": [5, 11], "device": "cuda", "precision": {"asked": "auto"}, "bf16": True, "windows": 999,
            "questions": 100, "train_seconds": 9.0, "best": {"f1": 50.0}}  # fmt: skip
    (tmp_path / "training.json").write_text(json.dumps(info))
    log = [{"stage": 0, "windows_per_s": 1.0}, {"stage": 0, "windows_per_s": 64.0}, {"stage": 0, "windows_per_s": 96.0},
           {"stage": 1, "windows_per_s": 5.0}, {"stage": 1, "windows_per_s": 320.0}, {"step": 3}]  # fmt: skip
    (tmp_path / "train_log.jsonl").write_text("\n".join(json.dumps(x) for x in log))
    clock = gpu_check._Clock()
    clock.marks = {0: {"first": 10.0, "last": 12.0}, 1: {"first": 20.0, "last": 25.0}}
    figures = gpu_check._training_figures(tmp_path, cfg, clock)
    # stage 0: 4 steps after the first in 2 s = 2 steps/s, 64 windows/s at batch 32; stage 1: 10 in 5 s = 2, 64
    assert [(s["steps"], s["steps_per_s"], s["windows_per_s"]) for s in figures["stages"]] == [
        (5, 2.0, 64.0),
        (11, 2.0, 64.0),
    ]
    # the loop's own log, its first entry per stage left out (warm-up): median of 64 and 96, and of 320 alone
    assert [s["logged_windows_per_s_median"] for s in figures["stages"]] == [80.0, 320.0]
    assert (figures["steps_per_s"], figures["windows_per_s"]) == (2.0, 64.0)  # 14 steps in 7 s
    assert figures["training"]["windows"] == 999 and figures["in_training_eval"] == {"f1": 50.0}
    clock.marks = {0: {"first": 10.0, "last": 10.0}}  # one stage never timed: no rate rather than a division by 0
    figures = gpu_check._training_figures(tmp_path, cfg, clock)
    assert [s["steps_per_s"] for s in figures["stages"]] == [None, None] and figures["steps_per_s"] is None


def test_what_travels_is_fp16_within_the_limit_and_nothing_else(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    make_tiny_qa_model(shared / gpu_check.TEACHER)
    with pytest.raises(EdgeQAError, match=r"train-v1.1.rebuilt.json.gz: missing; give the shared folder"):
        gpu_check.prepare(shared, tmp_path / ".gpu")
    (shared / gpu_check.TRAIN).parent.mkdir(parents=True)
    write_squad(shared / gpu_check.TRAIN, TOY_QAS, gz=True)
    write_squad(shared / gpu_check.DEV, TOY_QAS, gz=True)
    monkeypatch.setattr(gpu_check, "MAX_MB", 0.001)
    with pytest.raises(EdgeQAError, match=r"MB would not travel with the checkout \(at most 0.001 MB\)"):
        gpu_check.prepare(shared, tmp_path / ".gpu")
    assert not (tmp_path / ".gpu").exists()  # nothing half-written
    monkeypatch.setattr(gpu_check, "MAX_MB", 60.0)
    manifest = gpu_check.prepare(shared, tmp_path / ".gpu")
    original = load_file(shared / gpu_check.TEACHER / "model.safetensors")
    carried = load_file(tmp_path / ".gpu" / "teacher" / "model.safetensors")
    assert set(carried) == set(original) and all(carried[k].dtype == torch.float16 for k in carried)
    assert sum(manifest["files"].values()) / 1e6 == pytest.approx(manifest["total_mb"], abs=0.05)
    back = gpu_check.teacher_fp32(tmp_path / ".gpu" / "teacher", tmp_path / "fp32")
    restored = load_file(back / "model.safetensors")
    assert all(torch.equal(restored[k], original[k].half().float()) for k in original)  # fp16 rounding only


def test_weights_that_do_not_fit_fp16_are_refused(tmp_path):
    save_file({"w": torch.tensor([1.0, 70000.0])}, str(tmp_path / "big.safetensors"))  # fp16's largest is 65504
    with pytest.raises(EdgeQAError, match="w do not fit torch.float16"):
        gpu_check._convert_weights(tmp_path / "big.safetensors", tmp_path / "out.safetensors", torch.float16)


def test_the_clock_times_each_stage_from_its_first_step_to_its_last(monkeypatch):
    ticks = iter([1.0, 2.0, 3.0, 5.0, 8.0, 13.0])  # start, then each reading in turn
    monkeypatch.setattr(gpu_check.time, "perf_counter", lambda: next(ticks))
    clock = gpu_check._Clock()
    hooks = clock.hooks()
    hooks.start_stage(None, None, 0, 3)  # 2.0: training starts
    for step in (1, 2, 3):  # 3.0 after the first step, none after the second, 5.0 after the last
        hooks.after_step(None, 0, step, 3)
    hooks.start_stage(None, None, 1, 2)  # a later stage leaves the training start alone
    for step in (1, 2):  # 8.0, 13.0
        hooks.after_step(None, 1, step, 2)
    assert clock.start == 1.0 and clock.first_stage_at == 2.0
    assert clock.marks == {0: {"first": 3.0, "last": 5.0}, 1: {"first": 8.0, "last": 13.0}}


def test_without_cuda_the_check_refuses_unless_asked_and_names_what_is_missing(tmp_path):
    assert not torch.cuda.is_available()  # these machines have no GPU
    with pytest.raises(EdgeQAError) as e:
        gpu_check.run_check(tmp_path, tmp_path / "out")
    assert str(e.value) == "no CUDA device: this is the GPU check (--allow-cpu runs it on the CPU, to test it)"
    (tmp_path / "teacher").mkdir()
    (tmp_path / "train.json.gz").write_bytes(b"")
    with pytest.raises(EdgeQAError) as e:
        gpu_check.run_check(tmp_path, tmp_path / "out", allow_cpu=True)
    hint = "missing; run `make gpu-check` where ../shared is, and carry .gpu"
    assert str(e.value) == f"{tmp_path / 'dev.json.gz'}: {hint}"
    (tmp_path / "dev.json.gz").write_bytes(b"")
    with pytest.raises(EdgeQAError) as e:  # the default recipe is the checkout's: run from elsewhere, it is missing
        gpu_check.run_check(tmp_path, tmp_path / "out", allow_cpu=True, recipe=tmp_path / "none.yaml")
    assert str(e.value) == f"{tmp_path / 'none.yaml'}: no such recipe; run from the repository root, or give --recipe"
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_failed_device_half_still_leaves_its_json_saying_why(tmp_path):
    import transformers

    out = tmp_path / "out"
    with pytest.raises(EdgeQAError, match="missing"):
        gpu_check.main(["run", "--folder", str(tmp_path / "none"), "--out", str(out), "--allow-cpu"])
    result = json.loads((out / gpu_check.RESULT).read_text())
    assert result["status"] == "failed" and result["torch"] == torch.__version__
    assert result["transformers"] == transformers.__version__ and "device_name" not in result  # no CUDA here
    missing = tmp_path / "none" / "teacher"
    hint = "missing; run `make gpu-check` where ../shared is, and carry .gpu"
    assert result["error"] == f"EdgeQAError: {missing}: {hint}"
    assert result["traceback"].startswith("Traceback") and "run_check" in result["traceback"]


def test_prepare_from_the_command_line_says_what_it_wrote(tmp_path, capsys):
    shared = tmp_path / "shared"
    make_tiny_qa_model(shared / gpu_check.TEACHER)
    (shared / gpu_check.TRAIN).parent.mkdir(parents=True)
    write_squad(shared / gpu_check.TRAIN, TOY_QAS, gz=True)
    write_squad(shared / gpu_check.DEV, TOY_QAS, gz=True)
    assert gpu_check.main(["prepare", "--shared", str(shared), "--out", str(tmp_path / ".gpu")]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((tmp_path / ".gpu" / "manifest.json").read_text())
    assert json.loads(out[: out.rindex("}") + 1]) == manifest and manifest["source"] == str(shared)
    assert out.endswith(f"wrote {tmp_path / '.gpu'}: {manifest['total_mb']} MB; carry it to the device run "
                        "(see compress/gpu_check.py)\n")  # fmt: skip
    assert set(manifest["files"]) >= {"teacher/model.safetensors", "teacher/config.json", "teacher/vocab.txt"}
    assert not any(name.endswith(".bin") for name in manifest["files"])


def test_the_check_prepared_here_trains_and_scores_on_the_cpu_when_allowed(tmp_path):
    """Both halves end to end on a tiny teacher: what `make gpu-check` writes here, then the device half on it."""
    shared = tmp_path / "shared"
    make_tiny_qa_model(shared / gpu_check.TEACHER, layers=6)  # the recipe's student copies layers 0, 2, 4
    (shared / gpu_check.DEV).parent.mkdir(parents=True)
    write_squad(shared / gpu_check.TRAIN, TOY_QAS * 16, gz=True)
    write_squad(shared / gpu_check.DEV, TOY_QAS, gz=True)
    manifest = gpu_check.prepare(shared, tmp_path / ".gpu")
    weights = load_file(tmp_path / ".gpu" / "teacher" / "model.safetensors")
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    assert {"train.json.gz", "dev.json.gz", "teacher/vocab.txt", "teacher/config.json"} <= set(manifest["files"])

    result = gpu_check.run_check(
        tmp_path / ".gpu", tmp_path / "out", steps=(2, 3), limit=40, eval_questions=3, allow_cpu=True, recipe=RECIPE
    )
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text()) == result
    assert result["status"] == "done" and result["training"]["device"] == "cpu"
    assert [s["steps"] for s in result["stages"]] == [2, 3] and all(s["steps_per_s"] > 0 for s in result["stages"])
    assert result["eval_questions"] == 3 and 0 <= result["f1"] <= 100
    assert result["f1"] == result["in_training_eval"]["f1"]  # the saved student scores as it did in training
    assert result["training"]["precision"]["asked"] == "auto"


def test_the_device_half_passes_its_command_line_on_and_prints_what_it_wrote(tmp_path, monkeypatch, capsys):
    """The defaults the module's docstring and scripts/gpu_check.sh rely on, and each option reaching the check."""
    seen = []

    def check(folder, out, steps, limit, eval_questions, allow_cpu, recipe):
        seen.append((folder, out, steps, limit, eval_questions, allow_cpu, recipe))
        return {"status": "done", "f1": 1.5}

    monkeypatch.setattr(gpu_check, "run_check", check)
    monkeypatch.delenv("OUT", raising=False)
    assert gpu_check.main(["run"]) == 0
    assert seen.pop() == (Path(".gpu"), Path("runs/gpu-check"), (200, 400), 20000, 1000, False, gpu_check.RECIPE)
    assert capsys.readouterr().out == '{\n "status": "done",\n "f1": 1.5\n}\n'  # the result, as written
    monkeypatch.setenv("OUT", str(tmp_path / "out"))  # the device tool's result folder
    argv = ["run", "--folder", "f", "--steps", "3", "4", "5", "--limit", "7", "--eval-questions", "9", "--allow-cpu"]
    assert gpu_check.main([*argv, "--recipe", "r.yaml"]) == 0
    assert seen.pop() == (Path("f"), tmp_path / "out", (3, 4, 5), 7, 9, True, Path("r.yaml"))
    with pytest.raises(SystemExit) as e:  # a half must be named
        gpu_check.main([])
    assert e.value.code == 2


def test_prepare_reads_the_shared_folder_from_the_environment_by_default(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(gpu_check, "prepare", lambda shared, out: seen.append((shared, out)) or {"total_mb": 1.0})
    monkeypatch.delenv("EDGEQA_SHARED", raising=False)
    assert gpu_check.main(["prepare"]) == 0
    monkeypatch.setenv("EDGEQA_SHARED", str(tmp_path))
    assert gpu_check.main(["prepare"]) == 0
    assert seen == [(Path("../shared"), Path(".gpu")), (tmp_path, Path(".gpu"))]
    assert capsys.readouterr().out.startswith('{\n "total_mb": 1.0\n}\n')  # the manifest, indented as written


def test_the_check_writes_started_first_then_its_figures_and_the_seconds_of_each_phase(tmp_path, monkeypatch):
    """run_check's own steps with training and scoring stood in for: what each is handed, and the clock's phases."""
    import inspect

    folder = tmp_path / ".gpu"
    make_tiny_qa_model(folder / "teacher")
    gpu_check._convert_weights(folder / "teacher" / "model.safetensors", folder / "teacher" / "model.safetensors",
                               torch.float16)  # fmt: skip
    for name in ("train.json.gz", "dev.json.gz"):
        (folder / name).write_bytes(b"")
    ticks = iter([100.0, 103.0, 110.0, 111.5])  # the clock's start, the first stage, training's end, the very end
    monkeypatch.setattr(gpu_check.time, "perf_counter", lambda: next(ticks))
    handed = {}

    def distill(cfg, teacher, work, dev, cache, hooks):
        handed.update(cfg=cfg, teacher=teacher, work=work, dev=dev, cache=cache)
        handed["written"] = json.loads((tmp_path / "out" / gpu_check.RESULT).read_text())
        handed["dtypes"] = {v.dtype for v in load_file(teacher / "model.safetensors").values()}
        hooks.start_stage(None, None, 0, 7)
        return work / "best"

    monkeypatch.setattr(gpu_check, "distill", distill)
    monkeypatch.setattr(gpu_check, "_training_figures", lambda work, cfg, clock: {"training": {"device": "cpu"}})
    monkeypatch.setattr(gpu_check, "_final_eval", lambda best, cfg, dev, device: {"f1": 12.5, "best": best.name})
    result = gpu_check.run_check(folder, tmp_path / "out", (3, 4), 17, 9, allow_cpu=True, recipe=RECIPE)
    assert handed["written"] == {
        "torch": torch.__version__,
        "transformers": result["transformers"],
        "status": "started",
    }
    scratch = handed["work"].parent
    assert scratch.name.startswith("edgeqa-gpu-check-") and not scratch.exists()  # a scratch folder, removed after
    assert (handed["teacher"], handed["cache"], handed["dev"]) == (scratch / "teacher", scratch / "cache",
                                                                   str(folder / "dev.json.gz"))  # fmt: skip
    assert handed["dtypes"] == {torch.float32}  # the carried fp16 teacher, made fp32 again
    assert (handed["cfg"].train.limit, handed["cfg"].train.eval_limit) == (17, 9)
    assert [s.max_steps for s in handed["cfg"].stages] == [3, 4]
    assert result["seconds"] == {"before_training": 3.0, "training_with_evaluation": 7.0, "total": 11.5}
    assert (result["status"], result["f1"], result["best"]) == ("done", 12.5, "best")
    assert json.loads((tmp_path / "out" / gpu_check.RESULT).read_text()) == result
    defaults = {k: p.default for k, p in inspect.signature(gpu_check.run_check).parameters.items()}
    assert (defaults["steps"], defaults["limit"], defaults["eval_questions"]) == ((200, 400), 20000, 1000)


def test_on_a_gpu_the_record_names_the_device_its_memory_and_the_peak_used(tmp_path, monkeypatch):
    import types

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name=f"GPU {i}", total_memory=80 * 2**30 + 2**28))  # fmt: skip
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    env = gpu_check._environment()
    assert (env["device_name"], env["gpu_memory_gib"], env["cuda"]) == ("GPU 0", 80.2, "12.8")  # 80.25 to one place
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 3 * 2**30 + 2**27)
    cfg = gpu_check.distill_settings(RECIPE, tmp_path / "t", (2, 2), 10, 5)
    info = {"steps": [2, 2], "device": "cuda:0", "precision": {}, "bf16": True, "windows": 1, "questions": 1,
            "train_seconds": 1.0, "best": {}}  # fmt: skip
    (tmp_path / "training.json").write_text(json.dumps(info))
    (tmp_path / "train_log.jsonl").write_text("")
    figures = gpu_check._training_figures(tmp_path, cfg, gpu_check._Clock())
    assert figures["peak_gpu_memory_gib"] == 3.12  # 3.125 GiB to two places


def test_the_fp16_copy_keeps_integer_tensors_and_names_at_most_three_that_do_not_fit(tmp_path):
    from safetensors import safe_open

    tensors = {"w": torch.tensor([0.5, -2.0]), "ids": torch.arange(4, dtype=torch.int64)}
    save_file(tensors, str(tmp_path / "in.safetensors"))
    gpu_check._convert_weights(tmp_path / "in.safetensors", tmp_path / "out.safetensors", torch.float16)
    out = load_file(tmp_path / "out.safetensors")
    assert out["w"].dtype == torch.float16 and out["ids"].dtype == torch.int64 and out["ids"].tolist() == [0, 1, 2, 3]
    with safe_open(tmp_path / "out.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}  # what transformers' loader asks of a PyTorch safetensors file
    big = {name: torch.tensor([1e6]) for name in ("a", "b", "c", "d")}
    save_file(big, str(tmp_path / "big.safetensors"))
    with pytest.raises(EdgeQAError) as e:
        gpu_check._convert_weights(tmp_path / "big.safetensors", tmp_path / "x.safetensors", torch.float16)
    assert str(e.value) == f"{tmp_path / 'big.safetensors'}: a, b, c do not fit torch.float16"


def test_the_fp32_teacher_is_made_again_into_any_folder_also_one_there_already(tmp_path):
    make_tiny_qa_model(tmp_path / "t")
    dest = tmp_path / "scratch" / "new" / "teacher"  # parents made
    gpu_check.teacher_fp32(tmp_path / "t", dest)
    gpu_check.teacher_fp32(tmp_path / "t", dest)  # a second run over the first one's folder
    assert {v.dtype for v in load_file(dest / "model.safetensors").values()} == {torch.float32}
    assert (dest / "config.json").read_text() == (tmp_path / "t" / "config.json").read_text()


def test_what_travels_is_the_teachers_tokenizer_and_config_files_only_and_its_size_is_exact(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    teacher = make_tiny_qa_model(shared / gpu_check.TEACHER)
    (teacher / "spiece.model").write_bytes(b"sentencepiece")  # a Unigram tokenizer's model travels
    (teacher / "notes.md").write_text("not needed")
    (teacher / "extra.json").mkdir()  # a folder, whatever its name
    (shared / gpu_check.TRAIN).parent.mkdir(parents=True)
    write_squad(shared / gpu_check.TRAIN, TOY_QAS, gz=True)
    write_squad(shared / gpu_check.DEV, TOY_QAS, gz=True)
    manifest = gpu_check.prepare(shared, tmp_path / "a")
    assert "teacher/spiece.model" in manifest["files"] and "teacher/notes.md" not in manifest["files"]
    assert not any(name.startswith("teacher/extra.json") for name in manifest["files"])
    total = sum(manifest["files"].values())
    assert manifest["total_mb"] == round(total / 1e6, 1)
    monkeypatch.setattr(gpu_check, "MAX_MB", total / 1e6)  # exactly at the limit: it travels
    gpu_check.prepare(shared, tmp_path / "b")
    monkeypatch.setattr(gpu_check, "MAX_MB", total / 1e6 - 1e-7)
    with pytest.raises(EdgeQAError) as e:
        gpu_check.prepare(shared, tmp_path / "c")
    assert str(e.value).startswith(f"{tmp_path / 'c'}: {total / 1e6:.1f} MB would not travel")


def test_a_recipes_step_name_and_source_are_left_out_of_the_shortened_settings(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - distill:\n      name: s\n      from: teacher\n      student: {layers: [0]}\n"
                      "      train: {data: x}\n      stages: [{loss: {hard: 1.0}}]\n")  # fmt: skip
    cfg = gpu_check.distill_settings(recipe, tmp_path / "t.json", (4,), 10, 3)
    assert cfg.student.layers == (0,) and cfg.stages[0].max_steps == 4


def test_the_final_score_is_the_saved_students_on_the_first_questions_and_its_rate(tmp_path, monkeypatch):
    from edgeqa.bench.evaluate import evaluate

    best = make_tiny_qa_model(tmp_path / "best", seed=3)
    dev = write_squad(tmp_path / "dev.json", TOY_QAS)
    cfg = gpu_check.distill_settings(RECIPE, tmp_path / "t", (2, 2), 10, 2)  # the first 2 dev questions
    ticks = iter([10.0, 11.23456])
    monkeypatch.setattr(gpu_check, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))  # the check's clock
    result = gpu_check._final_eval(best, cfg, dev, "cpu")
    expected = evaluate(best, dev, limit=2, cfg=cfg.train.qa, progress=False)
    assert result == {"f1": round(expected["f1"], 3), "exact": round(expected["exact_match"], 3),
                      "eval_questions": 2, "eval_seconds": 1.23, "eval_questions_per_s": 1.6}  # fmt: skip


def test_stage_rates_are_rounded_as_recorded_and_a_stage_of_one_step_has_none(tmp_path):
    cfg = gpu_check.distill_settings(RECIPE, tmp_path / "t", (4, 1), 100, 10)
    info = {"steps": [4, 1], "device": "cpu", "precision": {}, "bf16": False, "windows": 1, "questions": 1,
            "train_seconds": 1.0, "best": {}}  # fmt: skip
    (tmp_path / "training.json").write_text(json.dumps(info))
    log = [{"stage": 0, "windows_per_s": 1.0}, {"stage": 0, "windows_per_s": 10.123}, {"stage": 0, "windows_per_s": 3}]
    (tmp_path / "train_log.jsonl").write_text("\n".join(json.dumps(x) for x in log))
    clock = gpu_check._Clock()
    clock.marks = {0: {"first": 1.0, "last": 1.7}, 1: {"first": 2.0, "last": 2.0}}  # 3 steps in 0.7 s; one step
    figures = gpu_check._training_figures(tmp_path, cfg, clock)
    first, second = figures["stages"]
    assert first["loss"] == cfg.stages[0].loss.to_dict()
    # 3 / 0.7 = 4.2857 steps/s; x 32 windows = 137.14 windows/s; median of 10.123 and 3 = 6.5615
    assert (first["steps_per_s"], first["windows_per_s"], first["logged_windows_per_s_median"]) == (4.29, 137.1, 6.6)
    assert (second["steps_per_s"], second["windows_per_s"]) == (None, None)
    assert (figures["steps_per_s"], figures["windows_per_s"]) == (4.29, 137.1)  # from the clock, not rounded rates
