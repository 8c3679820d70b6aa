"""`make arm64-check`: do the int8 models answer the same on ARM processors as on this x86 machine?

ONNX Runtime picks its int8 kernels by what the processor offers: AVX-512 VNNI here, NEON dot product on most
phones and Graviton-class servers, i8mm/SVE on newer cores, and KleidiAI's SME kernels where SME exists. Their
arithmetic differs (accumulation order, requantisation), so an answer can change with the processor. With no ARM
machine at hand, the aarch64 build of ONNX Runtime runs under qemu-user (scripts/arm64-env.sh provisions it), once
per emulated CPU profile, on the first N dev questions.

Only the model runs under emulation (export/emulation/arm64_runner.py: numpy and onnxruntime, nothing else). This side
tokenises with edgeqa's own code, runs the same runner natively for the x86 reference, then turns every run's
logits into answers and EM/F1 with bench.qa and bench.metric, and reports per profile the share of answers
identical to x86's, the largest logit difference, and EM/F1 beside x86's. Emulated run times are not latency
(emulation is far slower than a real core; docs/arm64.md) and are kept only as job durations, for sizing N.

This module drives the runs (profiles, models, inputs, job commands, running and scoring jobs, the u8 x s8
saturation probe's model); export/emulation/arm64_report.py turns them into the report. Both also serve
export/emulation/avx2_check.py, which runs the host's own x86 venv under qemu-x86_64 with an AVX2-only CPU model.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeqa.bench.engines import ONNX_NAME, ORT_NAME, load_tokenizer, session_settings
from edgeqa.bench.files import EdgeQAError, read_json
from edgeqa.bench.metric import score
from edgeqa.bench.qa import QAConfig, best_spans, tokenize
from edgeqa.bench.squad import load_squad
from edgeqa.export.emulation.arm64_report import (
    PROBE_K,
    PROBE_WEIGHTS,
    assemble_logits,
    compare_runs,
    probe_verdict,
    render_table,
    write_check,
)
from edgeqa.export.mobile import convert_to_ort
from edgeqa.export.onnx import export_onnx
from edgeqa.export.optimize import fuse
from edgeqa.export.quantize import preset, preset_record, quantize

log = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("arm64_runner.py")
DEFAULT_LIMIT = 48


@dataclass(frozen=True)
class Profile:
    """An emulated processor: qemu's target and CPU model, and whether ONNX Runtime may use its KleidiAI kernels.

    aarch64 profiles run the aarch64 Python that scripts/arm64-env.sh provisions; x86_64 ones run this venv's own
    Python under qemu-x86_64 (qemu's TCG emulates AVX2 but no AVX-512, AVX-VNNI or AMX).
    """

    name: str
    qemu_cpu: str
    disable_kleidiai: bool
    about: str
    target: str = "aarch64"


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("neoverse-n1", "neoverse-n1", False, "Armv8.2 NEON with dot product (sdot/udot); no i8mm, SVE or SME"),
        Profile("neoverse-v1", "neoverse-v1", False, "Armv8.4 with dot product, i8mm (smmla) and SVE; no SME"),
        Profile("sme", "max", False, "qemu's max (Armv9: SVE2, i8mm, SME): ONNX Runtime switches to KleidiAI"),
        Profile("sme-no-kleidiai", "max", True, "the same CPU with session config mlas.disable_kleidiai=1"),
        # noTSX: plain Haswell asks for TSX, which TCG lacks (a warning per thread, nothing else).
        Profile("avx2", "Haswell-noTSX", False, "AVX2+FMA, no AVX-512/VNNI: MLAS's vpmaddubsw kernels", "x86_64"),
    )
}
DEFAULT_PROFILES = ("neoverse-n1", "sme", "sme-no-kleidiai")
ARM_PROFILES = tuple(name for name, p in PROFILES.items() if p.target == "aarch64")


@dataclass(frozen=True)
class Job:
    """One run of one model: natively (profile None, the x86 reference) or under emulation."""

    model: str
    model_path: Path
    profile: Profile | None

    @property
    def key(self) -> str:
        return f"{self.model}@{self.profile.name if self.profile else 'x86'}"


# ---- models ----


def write_u8s8_probe(path: Path) -> Path:
    """Save the probe model (MatMulInteger, as dynamic int8 models use) for the runner's --probe; what it should
    return, and the verdict on what it did, are in arm64_report."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.tile(np.asarray(PROBE_WEIGHTS, dtype=np.int8), (PROBE_K, 1))
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "u8s8_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, PROBE_K])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, len(PROBE_WEIGHTS)])],
        [numpy_helper.from_array(weights, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def attention_fused_graph(teacher: Path, quickstart: Path, out: Path, parity: list) -> Path:
    """The quickstart's attention-fused fp32 graph, or, without `make run`, one exported and fused into `out`."""
    base = quickstart / "onnx-fused-attention"
    if not (base / ONNX_NAME).exists():
        base = out / "onnx-fused-attention"
        if not (base / ONNX_NAME).exists():
            log.info("no quickstart models in %s: exporting %s", quickstart, teacher)
            export_onnx(teacher, out / "onnx-fp32", 17, parity)
            fuse(out / "onnx-fp32", base, parity, fusions=("attention",))
    return base


def ensure_models(teacher: Path, quickstart: Path, out: Path, parity: list) -> dict[str, Path]:
    """The two models checked: the quickstart's int8 .ort and an int8 .onnx made with the arm64 preset.

    Both come from the quickstart's attention-fused graph. What `make run` has already made is used; whatever is
    missing is made here, into `out`, at the cost of an export and a quantization (about a minute), so that the
    check also works from a fresh clone.
    """

    base = attention_fused_graph(teacher, quickstart, out, parity)
    mobile = quickstart / "ort-int8-dynamic"
    if not (mobile / ORT_NAME).exists():
        mobile = out / "ort-int8-dynamic"
        if not (mobile / ORT_NAME).exists():
            # As the quickstart makes it: the preset that fits this machine.
            quantize(base, out / "onnx-int8-dynamic", preset("auto"), preset_info=preset_record("auto"))
            convert_to_ort(out / "onnx-int8-dynamic", mobile)
    arm = out / "onnx-int8-arm64"
    if not (arm / ONNX_NAME).exists():
        quantize(base, arm, preset("arm64"), preset_info=preset_record("arm64"))
    return {"ort-int8-dynamic": mobile / ORT_NAME, "onnx-int8-arm64": arm / ONNX_NAME}


# ---- inputs, jobs ----


def write_inputs(examples: list, tokenizer_dir: Path, path: Path, cfg: QAConfig) -> tuple[Any, list[int]]:
    """Tokenise the questions as edgeqa's engine does and save each window unpadded (batch 1, as deployed)."""

    tokenizer = load_tokenizer(tokenizer_dir)
    features = tokenize(tokenizer, [e.question for e in examples], [e.context for e in examples], cfg)
    arrays: dict[str, np.ndarray] = {"n_windows": np.asarray(len(features))}
    for i, ids in enumerate(features.input_ids):
        arrays[f"w{i}.input_ids"] = np.asarray(ids, dtype=np.int64)
        arrays[f"w{i}.attention_mask"] = np.ones(len(ids), dtype=np.int64)
        types = features.token_type_ids[i] if features.token_type_ids is not None else [0] * len(ids)
        arrays[f"w{i}.token_type_ids"] = np.asarray(types, dtype=np.int64)
    np.savez(path, **arrays)
    return features, features.lengths.tolist()


def qemu_binary(env_dir: Path, target: str) -> Path:
    """The static qemu-user emulator for `target` that scripts/arm64-env.sh keeps."""
    return env_dir / "qemu" / "usr" / "bin" / f"qemu-{target}"


def job_command(
    job: Job, inputs: Path, out: Path, env_dir: Path, probe: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one runner job.

    Native jobs run this venv's Python; aarch64 ones go through the emulated Python's wrapper, x86_64 ones run this
    venv's Python under qemu-x86_64. qemu-user takes the CPU model from QEMU_CPU either way.
    """
    disabled = session_settings(job.model_path.parent).get("disabled_optimizers", [])
    args = [str(RUNNER), "--inputs", str(inputs), "--model", str(job.model_path), "--out", str(out)]
    args += [f"--disabled-optimizer={name}" for name in disabled]
    if probe is not None:
        args.append(f"--probe={probe}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QEMU_CPU")}
    if job.profile is None:
        return [sys.executable, *args], env
    if job.profile.disable_kleidiai:
        args.append("--disable-kleidiai")
    env["QEMU_CPU"] = job.profile.qemu_cpu
    if job.profile.target == "x86_64":
        return [str(qemu_binary(env_dir, "x86_64")), sys.executable, *args], env
    return [str(env_dir / "run-python"), *args], env


def run_jobs(
    jobs: list[Job], inputs: Path, work: Path, env_dir: Path, parallel: int, probe: Path | None = None
) -> dict[str, dict]:
    """Run the jobs, `parallel` at a time (one thread each); return each one's runner record by job key."""

    def one(job: Job) -> tuple[str, dict]:
        out = work / f"{job.key.replace('@', '.')}.npz"
        cmd, env = job_command(job, inputs, out, env_dir, probe)
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise EdgeQAError(f"{job.key}: the runner failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        log.info("%s done (%.0f s)", job.key, time.monotonic() - t0)
        return job.key, {**read_json(out.with_suffix(".json")), "logits": str(out)}

    # Emulated jobs first, the longest (.onnx models are optimised at load, under emulation) first of all.
    order = sorted(jobs, key=lambda j: (j.profile is None, j.model_path.suffix != ".onnx"))
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return dict(pool.map(one, order))


# ---- scoring, report ----


def score_runs(records: dict[str, dict], jobs: list[Job], dataset, features, lengths: list[int], cfg: QAConfig):
    """Each run's logits -> answers -> EM/F1 with edgeqa's span search and metric; rows against the x86 run."""

    contexts = [e.context for e in dataset.examples]
    runs: dict[str, tuple] = {}
    for job in jobs:
        with np.load(records[job.key]["logits"]) as saved:
            start, end = assemble_logits(saved, lengths)
        answers = best_spans(start, end, features, contexts, cfg)
        predictions = {ex.id: a.text for ex, a in zip(dataset.examples, answers, strict=True)}
        runs[job.key] = (start, end, predictions, score(dataset, predictions))
    rows = []
    for job in jobs:
        rec = records[job.key]
        reference = runs[Job(job.model, job.model_path, None).key]
        rows.append(
            {
                "model": job.model,
                "profile": job.profile.name if job.profile else "x86 (native)",
                "qemu_cpu": job.profile.qemu_cpu if job.profile else None,
                "disable_kleidiai": rec["disable_kleidiai"],
                "machine": rec["machine"],
                "onnxruntime": rec["onnxruntime"],
                "device": rec["device"],
                "cpu_features": rec["cpu_features"],
                "cpuid_features": rec.get("cpuid_features", ""),
                "u8s8_probe": probe_verdict(rec.get("probe_output")),
                **compare_runs(reference, runs[job.key]),
                "load_s": rec["load_s"],
                "windows_s": rec["windows_s"],
            }
        )
    # Between runs of one model, e.g. sme against sme-no-kleidiai: what KleidiAI alone changes.
    pairwise = {}
    for i, a in enumerate(jobs):
        for b in jobs[i + 1 :]:
            if a.model == b.model:
                both = compare_runs(runs[a.key], runs[b.key])
                pairwise[f"{a.key} vs {b.key}"] = {k: both[k] for k in ("same_answer_share", "max_abs_logit_diff")}
    return rows, {key: run[2] for key, run in runs.items()}, pairwise


def machine_record(env_dir: Path, target: str = "aarch64") -> dict[str, Any]:
    import platform

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines[:30])}
    qemu = qemu_binary(env_dir, target)
    version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout if qemu.exists() else ""
    return {
        # "AMD EPYC" alone names no generation on these virtual machines; family 25 model 17 is Zen 4.
        "host_cpu": fields.get("model name") or platform.processor(),
        "host_cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
        "host_cores": os.cpu_count(),
        "qemu": version.splitlines()[0] if version else None,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edgeqa.export.emulation.arm64_check", description=__doc__.splitlines()[0]
    )
    p.add_argument("--shared", type=Path, default=Path("../shared"), help="shared teacher and data (../shared)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"first N dev questions ({DEFAULT_LIMIT})")
    p.add_argument("--profiles", nargs="+", choices=ARM_PROFILES, default=list(DEFAULT_PROFILES))
    p.add_argument("--quickstart", type=Path, default=Path("runs/quickstart/models"), help="models of `make run`")
    p.add_argument("--out", type=Path, default=Path("runs/arm64-check"))
    p.add_argument("--env", type=Path, default=Path(".arm64"), help="folder scripts/arm64-env.sh provisioned")
    p.add_argument("--parallel", type=int, default=os.cpu_count() or 1, help="jobs at a time, one thread each")
    return p


def setup_logging(name: str) -> None:
    """INFO for edgeqa's own loggers only (and the check's, `__main__` when run with -m): ONNX Runtime's quantizer
    logs a line per tensor on the root logger."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for logger in ("edgeqa", name):
        logging.getLogger(logger).setLevel(logging.INFO)


def load_questions(shared: Path, limit: int):
    """The teacher's folder (its tokenizer) and the first `limit` SQuAD v1.1 dev questions."""

    return shared / "models" / "minilm-l6-h384-squad1", load_squad(
        shared / "data" / "squad" / "dev-v1.1.json.gz", limit
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(__name__)
    t0 = time.monotonic()
    try:
        if not (args.env / "run-python").exists():
            raise EdgeQAError(f"{args.env}: no emulated ONNX Runtime; run scripts/arm64-env.sh first")
        teacher, dataset = load_questions(args.shared, args.limit)
        models = ensure_models(teacher, args.quickstart, args.out / "models", dataset.examples[:16])
        cfg = QAConfig()
        work = args.out / "logits"
        work.mkdir(parents=True, exist_ok=True)
        features, lengths = write_inputs(dataset.examples, teacher, work / "inputs.npz", cfg)
        log.info(
            "%d questions, %d windows; %d models x %d ARM profiles",
            len(dataset),
            len(lengths),
            len(models),
            len(args.profiles),
        )
        jobs = [Job(m, path, None) for m, path in models.items()]
        jobs += [Job(m, path, PROFILES[p]) for m, path in models.items() for p in args.profiles]
        records = run_jobs(jobs, work / "inputs.npz", work, args.env.resolve(), args.parallel)
        rows, predictions, pairwise = score_runs(records, jobs, dataset, features, lengths, cfg)
    except EdgeQAError as e:
        print(f"arm64-check: error: {e}", file=sys.stderr)
        return 1
    table = render_table(rows)
    report = {
        "questions": len(dataset),
        "windows": len(lengths),
        "data": str(dataset.source),
        "models": {name: str(path) for name, path in models.items()},
        "profiles": {p: PROFILES[p].__dict__ for p in args.profiles},
        **machine_record(args.env),
        "note": "load_s and windows_s are how long the jobs took, under emulation for ARM rows: no latency",
        "rows": rows,
        "pairwise": pairwise,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    write_check(args.out, "arm64-check", report, table, predictions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
