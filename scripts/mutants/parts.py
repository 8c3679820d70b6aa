"""The parts of `make mutants`: each part a set of mutmut mutant-name globs and the fast tests that cover them.

mutmut names a mutant after its file's path (bench/metric.py: bench.metric.x_f1__mutmut_3) but finds which tests
reach it under the module's import name (edgeqa.bench.metric), and in a checkout the two differ. So mutmut runs in a
copy of the tree laid out as in the wheel, mutants/tree/ (edgeqa/bench/..., tests/, recipes/, pyproject.toml),
refreshed from the checkout before each run (files whose bytes are unchanged keep their times, so mutmut keeps their
mutants and results).

mutmut 3 reads its settings only from pyproject.toml. The checkout's selects every test file whose tests run
in-process (what `sample` uses); for a part, the tree's copy selects only the part's own test files, since with
every file selected a mutant of a widely used function (the span search, say) runs dozens of slow tests. A part is
chosen by the mutant-name globs on the command line; named globs make mutmut test every mutant of the part again, so
a part's score is always that of the tests as they are now. mutmut forgets every recorded result when the selection
changes, as it does from one part to the next, so each part's results (and the sample's) are saved as soon as it
ends, in mutants/tree/results/NAME.json, which `summary`, `retest` and `estimate` read. Each mutant runs only the
selected tests that cover its function (mutmut traces them once), stopping at the first failure, so only in-process
tests count: code run in a subprocess is the unmutated checkout.

    python scripts/mutants/parts.py run PART...   # mutate and test the parts named (all of them, in order, if none)
    python scripts/mutants/parts.py retest PART...  # test again only the part's mutants not killed last time
    python scripts/mutants/parts.py summary       # killed/total per part from the saved results, and survivors
    python scripts/mutants/parts.py sample N [SEED]  # test N mutants drawn at random from outside the parts
    python scripts/mutants/parts.py estimate      # the library's score: the parts counted, the rest estimated
    python scripts/mutants/parts.py draw PART N SEED [--survivors]  # N of a part's untested mutants, at random

`retest` is the quick way after adding tests for survivors: a killed mutant stays killed when tests are added, and
mutmut itself remakes (and so tests again) the mutants of every function whose source changed.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "mutants" / "tree"
PACKAGES = ("bench", "compress", "export", "pipeline")  # top-level in a checkout, inside edgeqa/ in the wheel
MUTMUT = Path(sys.executable).parent / "mutmut"
SELECTION = "pytest_add_cli_args_test_selection = "


@dataclass(frozen=True)
class Part:
    globs: tuple[str, ...]  # mutmut mutant names: module.x_function__mutmut_N, module.xǁClassǁmethod__mutmut_N
    tests: tuple[str, ...]  # the test files that cover it (all in pyproject's pytest_add_cli_args_test_selection)


# The first five are the ones whose mistakes would silently change a result; they run first, in this order.
PARTS: dict[str, Part] = {
    "metric": Part(("edgeqa.bench.metric.*",), ("tests/test_metric.py",)),
    "qa": Part(("edgeqa.bench.qa.*",), ("tests/test_qa.py", "tests/test_spans.py")),
    "records": Part(
        (
            "edgeqa.pipeline.records.*",
            "edgeqa.pipeline.steps.bench_step.*",
            "edgeqa.compress.checkpoint.*",
            "edgeqa.compress.trainset.x__file_digest*",
            "edgeqa.compress.trainset.x__folder_digest*",
            "edgeqa.compress.trainset.x_cache_*",
            "edgeqa.compress.trainset.x_check_cache*",
            "edgeqa.compress.trainset.x_build_cache*",
        ),
        (
            "tests/test_records.py",
            "tests/test_checkpoints.py",
            "tests/test_distill.py",
            "tests/test_serial.py",
            "tests/test_identities.py",
        ),
    ),
    # What chooses and removes weights, heads and neurons, and the methods' settings and descriptions; how a method
    # rides recovery training (`follow`, `hooks`) is the training loop's, tested whole in test_prune_recipes.
    "prune": Part(
        (
            *(
                f"edgeqa.compress.prune_magnitude.x_{f}*"
                for f in (
                    "prunable_linears",
                    "cubic_sparsity",
                    "cubic_done",
                    "apply_magnitude_masks",
                    "input_rms",
                    "_masked_weight",
                    "bake_masks",
                    "sparsity_report",
                    "describe_magnitude",
                )
            ),  # fmt: skip
            *(
                f"edgeqa.compress.prune_structured.x_{f}*"
                for f in (
                    "check_structured",
                    "head_scores_by_magnitude",
                    "ffn_scores_by_magnitude",
                    "heads_to_remove",
                    "prune_heads_",
                    "prune_ffn_",
                    "gradient_scores",
                )
            ),  # fmt: skip
            "edgeqa.compress.prune_magnitude.xǁMagnitudeConfigǁvalidate*",
            "edgeqa.compress.prune_magnitude.xǁScheduledSparsityǁvalidate*",
            "edgeqa.compress.prune_magnitude.xǁScheduledSparsityǁat_target*",
            "edgeqa.compress.prune_magnitude.xǁMagnitudeConfigǁdescribe*",
            "edgeqa.compress.prune_structured.xǁStructuredConfigǁvalidate*",
            "edgeqa.compress.prune_structured.xǁStructuredConfigǁdescribe*",
            "edgeqa.compress.prune_config.x_*",
            "edgeqa.compress.prune_config.xǁPruneConfigǁ__post_init__*",
            "edgeqa.compress.prune_config.xǁPruneConfigǁto_dict*",
        ),
        (
            "tests/test_prune.py",
            "tests/test_prune_choice.py",
            "tests/test_prune_settings.py",
            "tests/test_identities.py",
        ),
    ),
    "quantize": Part(
        (
            "edgeqa.export.quantize.xǁQuantizeConfigǁ*",
            "edgeqa.export.quantize.x_preset*",
            "edgeqa.export.quantize.x_excluded_nodes*",
            "edgeqa.export.quantize.xǁPresetǁ*",
            "edgeqa.export.quantize.x_register_preset*",
            "edgeqa.export.quantize.x_describe_preset*",
        ),
        ("tests/test_quantize_config.py", "tests/test_cpu.py"),
    ),
    # The rest of the library, as time allows: the distillation losses and the data-parallel batch order.
    "losses": Part(("edgeqa.compress.losses.*",), ("tests/test_distill.py",)),
    "trainset": Part(
        ("edgeqa.compress.trainset.x_epoch_batches*", "edgeqa.compress.trainset.xǁStepSamplerǁ*"),
        ("tests/test_distill.py",),
    ),
    # What a user reads: the report's rows, front, targets, warnings and files, and the latency statistics.
    "report": Part(
        ("edgeqa.bench.report.*", "edgeqa.bench.markdown.*"),
        (
            "tests/test_report_contents.py",
            "tests/test_report_plots.py",
            "tests/test_report.py",
            "tests/test_question_latency.py",  # the per-question table and targets
            "tests/test_ms_targets.py",  # the targets' tables
        ),
    ),
    "latency": Part(("edgeqa.bench.latency.*",), ("tests/test_latency.py", "tests/test_promises_scoring.py")),
    # Settings checks, JSON reading and the atomic writers every artefact goes through.
    "files": Part(("edgeqa.bench.files.*",), ("tests/test_files.py", "tests/test_writes.py")),
    "weights": Part(("edgeqa.bench.weights.*",), ("tests/test_weights.py",)),
    "engines": Part(("edgeqa.bench.engines.*",), ("tests/test_engines.py", "tests/test_engine_pieces.py")),
    "students": Part(("edgeqa.compress.student.*", "edgeqa.compress.train_config.*"), ("tests/test_students.py",)),
    # The checks run by hand under qemu (`make arm64-check`, `make avx2-check`), end to end with a stand-in emulator.
    "emulation": Part(
        ("edgeqa.export.emulation.*",),
        ("tests/test_arm64_check.py", "tests/test_avx2_check.py", "tests/test_emulation_main.py", "tests/test_help.py"),
    ),
    # The GPU check's two halves (its device half on the CPU) and the training-step timer, both run by hand.
    "gpu": Part(
        ("edgeqa.compress.gpu_check.*", "edgeqa.compress.step_time.*"),
        ("tests/test_gpu_check.py", "tests/test_step_time.py", "tests/test_help.py"),
    ),
    # The training loop and what it runs on: the loop, a run's setup and end, the passes the losses read, devices and
    # precision, the dev-subset score, and the labelled windows and micro-batches (their order is `trainset`).
    "training": Part(
        (
            "edgeqa.compress.train_loop.*",
            "edgeqa.compress.train.*",
            "edgeqa.compress.forward.*",
            "edgeqa.compress.devices.*",
            "edgeqa.compress.train_eval.*",
            "edgeqa.compress.trainset.x_load_trainset*",
            "edgeqa.compress.trainset.x_span_labels*",
            "edgeqa.compress.trainset.x_as_is*",
            "edgeqa.compress.trainset.xǁTrainSetǁ*",
            "edgeqa.compress.trainset.xǁStepBatchesǁ*",
        ),
        (
            "tests/test_train_loop.py",
            "tests/test_train_pieces.py",
            "tests/test_forward.py",
            "tests/test_trainset.py",
            "tests/test_distill.py",
            "tests/test_distill_setup.py",
            "tests/test_devices.py",
        ),
    ),
    # The least-squares refit of what magnitude masks keep, and OBS's choice of the mask inside it.
    "refit": Part(
        ("edgeqa.compress.prune_refit.*",), ("tests/test_prune.py", "tests/test_prune_apply.py", "tests/test_refit.py")
    ),
    # The methods as the pipeline applies them and recovery carries them (what `prune` leaves out: what chooses the
    # weights), the windows pruning reads, and the verbs the pipeline calls.
    "methods": Part(
        (
            "edgeqa.compress.prune.*",
            "edgeqa.compress.prune_data.*",
            "edgeqa.compress.prune_inc.*",
            "edgeqa.compress.prune_magnitude.x_skeleton*",
            *(
                f"edgeqa.compress.prune_magnitude.xǁMagnitudeConfigǁ{f}*"
                for f in ("data_windows", "why_data", "check_model", "apply", "follow", "_input_rms", "baked")
            ),
            "edgeqa.compress.prune_magnitude.xǁScheduledSparsityǁsparsity_scope*",
            *(
                f"edgeqa.compress.prune_structured.xǁStructuredConfigǁ{f}*"
                for f in ("data_windows", "check_model", "check_recovery", "apply", "record")
            ),
            "edgeqa.compress.prune_structured.x_span_loss*",
            *(
                f"edgeqa.compress.prune_config.xǁPruneConfigǁ{f}*"
                for f in (
                    "validate",
                    "needs_data",
                    "data_windows",
                    "check_model",
                    "check_recovery",
                    "apply",
                    "follow",
                    "at_target",
                    "sparsity_scope",
                    "record",
                    "describe",
                    "hooks",
                    "baked",
                )
            ),
        ),  # fmt: skip
        (
            "tests/test_prune_apply.py",
            "tests/test_prune_follow.py",
            "tests/test_prune_inc.py",
            "tests/test_prune_methods.py",
            "tests/test_prune_settings.py",
        ),
    ),
    # ONNX export and parity, fusion, the mobile format, and int8 quantization itself (its settings are `quantize`).
    "export": Part(
        (
            "edgeqa.export.onnx.*",
            "edgeqa.export.optimize.*",
            "edgeqa.export.mobile.*",
            "edgeqa.export.quantize.x_quantize*",
            "edgeqa.export.quantize.x__quantize_static*",
            "edgeqa.export.quantize.x_check_float_model*",
            "edgeqa.export.quantize.x_calibration_inputs*",
            "edgeqa.export.quantize.xǁ_SquadCalibrationǁ*",
        ),
        (
            "tests/test_export.py",
            "tests/test_fuse.py",
            "tests/test_calibration.py",
            "tests/test_static_int8.py",
            "tests/test_quantize_records.py",
            "tests/test_promises_making.py",
            "tests/test_quantize_config.py",
            "tests/test_cpu.py",
            "tests/test_torch_int8.py",
        ),
    ),
    # The one serialiser of settings and records (configs to JSON and back, fields added later).
    "serial": Part(("edgeqa.bench.serial.*",), ("tests/test_serial.py", "tests/test_records.py")),
    # The CPU's instruction class, the model families, the torch-free tokenizer, PyTorch's int8 baseline.
    "tokenizer": Part(
        (
            "edgeqa.bench.tokenizer.*",
            "edgeqa.bench.families.*",
            "edgeqa.bench.cpu.*",
            "edgeqa.bench.torch_int8.*",
        ),
        (
            "tests/test_bench_pieces.py",
            "tests/test_runtime.py",
            "tests/test_families.py",
            "tests/test_engine_pieces.py",
            "tests/test_cpu.py",
            "tests/test_torch_int8.py",
        ),
    ),
    # The side-by-side benchmark against Optimum's own int8 path (`make compare-optimum`).
    "optimum": Part(("edgeqa.bench.compare_optimum.*",), ("tests/test_compare_optimum.py", "tests/test_help.py")),
    # The pipeline: recipes and their YAML, the steps, runs, report rows (records and the bench step are `records`).
    # Its tests run recipes, so a survivor costs minutes: `make mutants-sample` style draws suit it best.
    "pipeline": Part(
        (
            *(f"edgeqa.pipeline.{m}.*" for m in ("context", "recipe", "rows", "run", "step", "yamlfile")),
            *(
                f"edgeqa.pipeline.steps.{m}_step.*"
                for m in ("distill", "export", "fuse", "mobile", "prune", "quantize", "report", "torch_int8")
            ),
        ),
        (
            "tests/test_recipe.py",
            "tests/test_recipe_parts.py",
            "tests/test_recipe_qa.py",
            "tests/test_steps.py",
            "tests/test_report_step.py",
            "tests/test_identities.py",
            "tests/test_cli.py",
            "tests/test_cli_errors.py",
            "tests/test_promises_making.py",
            "tests/test_prune_recipes.py",
            "tests/test_prune_methods.py",
            "tests/test_distill_runs.py",
            "tests/test_pipeline_pieces.py",
            "tests/test_promises_scoring.py",
        ),
    ),
    # Shapes tables, the choice of a shape per speed target, latency per real question (issue 30).
    "shapes": Part(
        (
            "edgeqa.bench.shapes.*",
            "edgeqa.bench.question_latency.*",
            "edgeqa.pipeline.shapes.*",
            "edgeqa.pipeline.targets.*",
            "edgeqa.pipeline.steps.targets_step.*",
            "edgeqa.bench.targets.*",
            "edgeqa.pipeline.rows.x_target_results*",
            "edgeqa.bench.markdown.x__choices*",
            "edgeqa.bench.markdown.x__target*",
            "edgeqa.bench.markdown.x__speed*",
        ),
        (
            "tests/test_shapes.py",
            "tests/test_targets.py",
            "tests/test_ms_targets.py",
            "tests/test_question_latency.py",
            "tests/test_latency.py",
            "tests/test_report_contents.py",
        ),
    ),
    # Reading SQuAD and scoring a model on it, the one place EM/F1 come from.
    "squad": Part(
        ("edgeqa.bench.squad.*", "edgeqa.bench.evaluate.*"), ("tests/test_squad.py", "tests/test_evaluate.py")
    ),
}


def _selection() -> set[str]:
    import tomllib  # Python 3.11+, as mutmut 3 reads pyproject.toml

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return set(config["pytest_add_cli_args_test_selection"])


def check_selection() -> None:
    """Every part's tests must be in pyproject's selection, or mutmut never runs them."""
    missing = sorted({t for p in PARTS.values() for t in p.tests} - _selection())
    if missing:
        sys.exit(f"mutants: add {', '.join(missing)} to [tool.mutmut] pytest_add_cli_args_test_selection")


def _copy(src: Path, dst: Path) -> None:
    """Copy a file unless `dst` already holds its bytes (mutmut remakes a file's mutants when its time changes)."""
    if not dst.exists() or dst.read_bytes() != src.read_bytes():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def _sync(src: Path, dst: Path, keep: tuple[str, ...] = ()) -> None:
    """Make `dst` a copy of `src`; the subfolders named in `keep` are left alone."""
    files = {p.relative_to(src) for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    for rel in files:
        _copy(src / rel, dst / rel)
    for path in list(dst.rglob("*")) if dst.exists() else []:
        rel = path.relative_to(dst)
        if path.is_file() and "__pycache__" not in rel.parts and rel.parts[0] not in keep and rel not in files:
            path.unlink()


def stage(tests: tuple[str, ...] = ()) -> None:
    """mutants/tree/: the checkout in the wheel's layout, the library's packages inside edgeqa/; with `tests`, its
    pyproject.toml selects only those test files (a part's), instead of every in-process test file."""
    _sync(ROOT / "edgeqa", TREE / "edgeqa", keep=PACKAGES)
    for package in PACKAGES:
        _sync(ROOT / package, TREE / "edgeqa" / package)
    for folder in ("tests", "recipes", "docs"):  # tests read recipes and check that docs name every key
        _sync(ROOT / folder, TREE / folder)
    text = (ROOT / "pyproject.toml").read_text()
    if tests:
        listed = "[" + ", ".join(f'"{t}"' for t in tests) + "]"
        text = re.sub(r"(?ms)^pytest_add_cli_args_test_selection = \[.*?\]", lambda _: SELECTION + listed, text)
    if not (TREE / "pyproject.toml").exists() or (TREE / "pyproject.toml").read_text() != text:
        (TREE / "pyproject.toml").write_text(text)


def _env() -> dict[str, str]:
    """One thread per mutant process (two run at once on two cores); tests/conftest.py preloads the heavy modules
    into mutmut's fork server when EDGEQA_MUTANTS_PRELOAD is set, so that each mutant does not import them again."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "EDGEQA_MUTANTS_PRELOAD": "1"}


def run(names: list[str], children: int) -> None:
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        sys.exit(f"mutants: unknown part {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    check_selection()
    env = _env()
    for name in names or list(PARTS):
        print(f"== part {name}: {' '.join(PARTS[name].globs)}", flush=True)
        stage(PARTS[name].tests)
        cmd = [str(MUTMUT), "run", "--max-children", str(children), *PARTS[name].globs]
        subprocess.run(cmd, cwd=TREE, env=env, check=True)
        _save(name)
    summary(names or list(PARTS))


def retest(names: list[str], children: int) -> None:
    """Run mutmut again on the parts' mutants that were not killed (survived, timed out, not checked, no tests), and
    on those of functions added or changed since the last results."""
    check_selection()
    env = _env()
    for name in names or list(PARTS):
        before = saved(name)
        todo = sorted(m for m, s in before.items() if s not in ("killed", "timeout"))
        if not todo:  # (with none named, mutmut would run every mutant)
            continue
        stage(PARTS[name].tests)
        run_mutants = [str(MUTMUT), "run", "--max-children", str(children)]
        subprocess.run([*run_mutants, *todo], cwd=TREE, env=env, check=True)
        # That run made the mutants of new and changed functions, under names the last results lack: test them too.
        fresh = sorted(set(_of_part(results(), name)) - set(before))
        if fresh:
            subprocess.run([*run_mutants, *fresh], cwd=TREE, env=env, check=True)
        _merge(name, before, {*todo, *fresh})
    summary(names or list(PARTS))


def _merge(name: str, before: dict[str, str], ran: set[str]) -> dict[str, str]:
    """Save a part's results after testing `ran` again: mutmut remakes the mutants of a changed function under other
    names, so the part's mutants are taken as they are now, each with its earlier kill, or with its earlier result
    when it was not among those run (mutmut may forget results when the selection changes)."""
    now = _of_part(results(), name)
    merged = {m: before[m] if before.get(m) in ("killed", "timeout") or (m not in ran and m in before) else s
              for m, s in now.items()}  # fmt: skip
    (TREE / "results").mkdir(exist_ok=True)
    (TREE / "results" / f"{name}.json").write_text(json.dumps(merged, indent=1, sort_keys=True))
    return merged


def _save(name: str) -> None:
    """Keep a part's results (or the sample's, as "sample") in mutants/tree/results/NAME.json: mutmut forgets every
    recorded result when the test selection changes, which it does from one part to the next."""
    found = results()
    mine = {m: found[m] for m in json.loads((TREE / "sample.json").read_text())["mutants"]} if name == "sample" else (
        _of_part(found, name))  # fmt: skip
    (TREE / "results").mkdir(exist_ok=True)
    (TREE / "results" / f"{name}.json").write_text(json.dumps(mine, indent=1, sort_keys=True))


def saved(name: str) -> dict[str, str]:
    """A part's (or the sample's) results as last saved; {} when it has not run."""
    path = TREE / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _of_part(found: dict[str, str], name: str) -> dict[str, str]:
    return {m: s for m, s in found.items() if any(fnmatch.fnmatchcase(m, g) for g in PARTS[name].globs)}


def results() -> dict[str, str]:
    """Every recorded mutant and its status (killed, survived, no tests, timeout, ...)."""
    out = subprocess.run([str(MUTMUT), "results", "--all", "true"], cwd=TREE, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    found = {}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            found[name] = status
    return found


def summary(names: list[str]) -> None:
    """Killed/total per part as last saved (a timeout counts as killed: the mutant was caught), then every other."""
    killed = total = 0
    for name in names:
        mine = saved(name)
        k = sum(s in ("killed", "timeout") for s in mine.values())
        killed, total = killed + k, total + len(mine)
        print(f"{name}: {k}/{len(mine)} killed" + (f" ({100 * k / len(mine):.1f}%)" if mine else ""))
        for m, s in sorted(mine.items()):
            if s not in ("killed", "timeout"):
                print(f"    {s}: {m}")
    if total:
        print(f"all: {killed}/{total} killed ({100 * killed / total:.1f}%)")


def draw(name: str, size: int, seed: int, children: int, survivors: bool = False) -> None:
    """Test `size` of a part's untested mutants drawn at random (seeded), and with `survivors` its survivors again:
    for a part whose tests run whole recipes, where a survivor costs minutes, the drawn share's rate estimates the
    rest. The draw is kept in mutants/tree/results/NAME.draw.json; `summary` counts the rest as not checked."""
    before = saved(name) or {m: "not checked" for m in _of_part({m: "" for m in results()}, name)}
    untested = sorted(m for m, s in before.items() if s not in ("killed", "timeout", "survived"))
    drawn = random.Random(seed).sample(untested, min(size, len(untested)))
    todo = sorted(drawn + ([m for m, s in before.items() if s == "survived"] if survivors else []))
    check_selection()
    stage(PARTS[name].tests)
    subprocess.run([str(MUTMUT), "run", "--max-children", str(children), *todo], cwd=TREE, env=_env(), check=True)
    merged = _merge(name, before, set(todo))
    kept, of = TREE / "results" / f"{name}.draw.json", len(untested)
    if not drawn and kept.exists():  # N = 0: the survivors tested again, the earlier draw counted anew
        record = json.loads(kept.read_text())
        drawn, of, seed = record["drawn"], record["of"], record["seed"]
    k = sum(merged[m] in ("killed", "timeout") for m in drawn)
    record = {"seed": seed, "of": of, "drawn": sorted(drawn), "killed": k}
    kept.write_text(json.dumps(record, indent=1))
    lo, hi = _wilson(k, len(drawn)) if drawn else (0.0, 0.0)
    print(f"{name}: {k}/{len(drawn)} drawn killed (95% interval {100 * lo:.1f}-{100 * hi:.1f}%) of {of}")
    summary([name])


def _outside_parts(found: dict[str, str]) -> list[str]:
    return sorted(m for m in found if not any(_of_part({m: ""}, n) for n in PARTS))


def sample(size: int, seed: int, children: int) -> None:
    """Test `size` mutants drawn uniformly (seeded) from those outside the parts: the whole library runs for many
    hours on one worker, a sample of a few hundred estimates its score to a few points in well under one."""
    if not results():  # mutmut makes every mutant on its first run; the metric part is the quickest to run
        run(["metric"], children)
    check_selection()
    stage()
    rest = _outside_parts(results())
    drawn = random.Random(seed).sample(rest, min(size, len(rest)))
    (TREE / "sample.json").write_text(json.dumps({"seed": seed, "of": len(rest), "mutants": sorted(drawn)}, indent=1))
    env = _env()
    for lo in range(0, len(drawn), 200):  # a bounded command line
        subprocess.run([str(MUTMUT), "run", "--max-children", str(children), *sorted(drawn)[lo : lo + 200]],
                       cwd=TREE, env=env, check=True)  # fmt: skip
    _save("sample")
    estimate()


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion k/n (Wilson 1927), sound near 0 and 1 where k/n +- 2se is not."""
    p, z2 = k / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return centre - half, centre + half


def estimate() -> None:
    """Killed/total of the parts (every mutant run), of the drawn sample per package, and of the whole library: the
    parts' kills plus the sample's rate times the mutants outside the parts."""
    found = results()  # every mutant's name; its status may be forgotten, so the saved results are read
    done = {m: s for m, s in saved("sample").items() if s != "not checked"}
    rest = _outside_parts(found)
    parts = {m: s for n in PARTS for m, s in saved(n).items()}
    caught = ("killed", "timeout")
    k_parts = sum(s in caught for s in parts.values())
    print(f"parts: {k_parts}/{len(parts)} killed")
    for package in (*PACKAGES, ""):
        mine = {m: s for m, s in done.items() if m.startswith(f"edgeqa.{package}")}
        if mine:
            k = sum(s in caught for s in mine.values())
            lo, hi = _wilson(k, len(mine))
            print(
                f"sample {package or 'all'}: {k}/{len(mine)} killed ({100 * k / len(mine):.1f}%, 95% interval "
                f"{100 * lo:.1f}-{100 * hi:.1f}%) of {sum(m.startswith(f'edgeqa.{package}') for m in rest)}"
            )
    if done:
        k = sum(s in caught for s in done.values())
        rate, (lo, hi) = k / len(done), _wilson(k, len(done))
        total = len(parts) + len(rest)
        print(
            f"library: {(k_parts + rate * len(rest)) / total:.1%} killed (95% interval "
            f"{(k_parts + lo * len(rest)) / total:.1%}-{(k_parts + hi * len(rest)) / total:.1%}) of {total}"
        )
        for m, s in sorted(done.items()):
            if s not in caught:
                print(f"    {s}: {m}")


def main(argv: list[str]) -> None:
    command, names = (argv[0], argv[1:]) if argv else ("run", [])
    if command == "run":
        run(names, int(os.environ.get("MUTANT_CHILDREN", "1")))
    elif command == "retest":
        retest(names, int(os.environ.get("MUTANT_CHILDREN", "1")))
    elif command == "summary":
        summary(names or list(PARTS))
    elif command == "sample":
        sample(int(names[0]), int(names[1]) if len(names) > 1 else 0, int(os.environ.get("MUTANT_CHILDREN", "1")))
    elif command == "draw":
        children = int(os.environ.get("MUTANT_CHILDREN", "1"))
        draw(names[0], int(names[1]), int(names[2]), children, "--survivors" in names)
    elif command == "estimate":
        estimate()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
