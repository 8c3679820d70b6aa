"""Latency of one QA model at fixed shapes: warm-up, many timed runs, percentiles, and the context to trust them.

Every result carries the machine (CPU model, cores, SIMD flags), thread count, library versions, model file size
and the process's peak resident memory, because a latency without them cannot be compared with anything.
Run one model per process (`python -m edgeqa.bench.latency`, which `benchmark_subprocess` does) so that peak memory
belongs to that model alone. Given eval data, a benchmark also times the model per real question, end to end
(`bench.question_latency`): the latency a user meets, at the lengths real questions have.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeqa.bench.cpu import this_cpu
from edgeqa.bench.engines import load_qa_model, weight_files
from edgeqa.bench.files import EdgeQAError, check_field_types
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.question_latency import QUESTION_WARMUP, merge_question_passes, time_questions
from edgeqa.bench.serial import added_later, config_from_dict, config_to_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyConfig:
    batch_sizes: tuple[int, ...] = (1,)
    seq_lens: tuple[int, ...] = (384, 128)
    warmup: int = 10
    repeats: int = 100
    threads: int = 2
    rounds: int = 1  # benchmark_interleaved: split repeats over this many passes across all models
    torch_int8: bool = False  # PyTorch-side baseline: dynamic int8 of nn.Linear applied at load
    questions: int = added_later(100)  # real questions of the eval data timed end to end at batch 1, each pass; 0: none

    def __post_init__(self) -> None:
        check_field_types(self, "bench")
        counts = [*self.batch_sizes, *self.seq_lens, self.repeats, self.threads, self.rounds]
        if not self.batch_sizes or not self.seq_lens or any(not isinstance(n, int) or n < 1 for n in counts):
            raise EdgeQAError("bench settings: batch sizes, sequence lengths, repeats and threads must be positive")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise EdgeQAError("bench settings: warmup must be a whole number >= 0")
        if not isinstance(self.questions, int) or self.questions < 0:
            raise EdgeQAError("bench settings: questions must be a whole number >= 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lists, not tuples), so a saved copy compares equal to a fresh one."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LatencyConfig:
        return config_from_dict(cls, raw, "bench")


@dataclass
class ShapeLatency:
    batch_size: int
    seq_len: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # sequences per second at the mean
    runs: int
    samples_ms: list[float] = field(default_factory=list, repr=False)


def machine_info() -> dict[str, Any]:
    """The CPU (model, instruction class and the flags that decide presets), cores and Python: a timing's context."""
    cpu = this_cpu()
    return {
        "cpu": cpu.model,
        "logical_cores": os.cpu_count(),
        "avx2": "avx2" in cpu.flags,
        "avx512f": "avx512f" in cpu.flags,
        "avx512_vnni": "avx512_vnni" in cpu.flags,
        "amx_int8": "amx_int8" in cpu.flags,
        "isa": cpu.isa,
        "flags": cpu.to_dict()["flags"],
        "arch": cpu.arch,
        "python": platform.python_version(),
    }


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "onnxruntime", "onnx", "transformers", "numpy", "optimum", "optimum-onnx"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
    through fork and exec, so a benchmark child started by a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_file_size(path: str | Path) -> int:
    """Bytes of the weights that ship: model.onnx (+ external data) or the PyTorch weight files."""
    return sum(f.stat().st_size for f in weight_files(path))


def time_shape(
    engine, vocab_size: int, cls_id: int, batch_size: int, seq_len: int, warmup: int, repeats: int
) -> ShapeLatency:
    """Time one input shape; real token ids are not needed since dense kernels do not look at values."""
    rng = np.random.default_rng(0)
    ids = rng.integers(vocab_size // 10, vocab_size, size=(batch_size, seq_len), dtype=np.int64)
    ids[:, 0] = cls_id
    arrays = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),  # segment 0 exists in every model (RoBERTa has only that one)
    }
    inputs = {n: arrays[n] for n in engine.input_names}
    for _ in range(warmup):
        engine(inputs)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine(inputs)
        samples.append((time.perf_counter() - t0) * 1e3)
    return _summarise(batch_size, seq_len, samples)


def _summarise(batch_size: int, seq_len: int, samples_ms: list[float]) -> ShapeLatency:
    samples = np.asarray(samples_ms)
    mean = float(samples.mean())
    return ShapeLatency(
        batch_size,
        seq_len,
        float(np.percentile(samples, 50)),
        float(np.percentile(samples, 90)),
        float(np.percentile(samples, 99)),
        mean,
        1e3 * batch_size / mean,
        len(samples),
        [round(float(s), 4) for s in samples],
    )


def benchmark(
    model: str | Path, cfg: LatencyConfig = LatencyConfig(), data: str | Path | None = None, qa: QAConfig = QAConfig()
) -> dict[str, Any]:
    """Latency at every (batch, sequence) of `cfg` for one model, with machine, versions, size and peak memory; with
    `data`, also per question on `cfg.questions` of its questions (windows cut by `qa`), else `questions` is None."""

    loaded = load_qa_model(model, cfg.threads, torch_int8=cfg.torch_int8)
    vocab_size, cls_id = len(loaded.tokenizer), loaded.tokenizer.cls_token_id or 0
    shapes = [
        time_shape(loaded.engine, vocab_size, cls_id, b, s, cfg.warmup, cfg.repeats)
        for b in cfg.batch_sizes
        for s in cfg.seq_lens
    ]
    questions = None
    if data is not None and cfg.questions:
        questions = time_questions(loaded, data, cfg.questions, qa, min(cfg.warmup, QUESTION_WARMUP))
    return {
        "model": str(model),
        "backend": loaded.engine.backend,
        "file_bytes": model_file_size(model),
        "peak_rss_mb": peak_rss_mb(),
        "settings": cfg.to_dict(),
        "latency": [{k: v for k, v in asdict(s).items()} for s in shapes],
        "questions": questions,
        "machine": machine_info(),
        "versions": library_versions(),
    }


def benchmark_subprocess(
    model: str | Path, cfg: LatencyConfig = LatencyConfig(), data: str | Path | None = None, qa: QAConfig = QAConfig()
) -> dict[str, Any]:
    """`benchmark` in a fresh Python process, so its peak memory and thread pools are the model's alone."""
    cmd = [sys.executable, "-m", "edgeqa.bench.latency", str(model), "--config", json.dumps(cfg.to_dict())]
    if data is not None:  # a file by its absolute path: the process runs elsewhere (a hub id stays as it is)
        where = str(Path(data).absolute()) if Path(data).exists() else str(data)
        cmd += ["--data", where, "--qa", json.dumps(qa.to_dict())]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeQAError(f"{model}: benchmark failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def benchmark_interleaved(
    models: dict[str, tuple[str | Path, bool]],
    cfg: LatencyConfig,
    done: Callable[[str, dict], None] | None = None,
    data: str | Path | None = None,
    qa: QAConfig = QAConfig(),
) -> dict[str, dict[str, Any]]:
    """Time several models {name: (path, torch_int8)} in `cfg.rounds` passes over all of them.

    On a shared machine speed drifts over minutes; timing model A for a minute and then model B bakes that drift
    into the A/B ratio. Each pass times every model with repeats/rounds runs, so drift lands on all of them alike;
    the percentiles are taken over all runs of all passes. `done(name, result)` is called for each model once all
    passes are over (a run killed during the passes times them all again). With `data`, every pass also times each
    model on the same `cfg.questions` questions (not split among the passes), pooled like the shapes' runs.
    """
    per_pass = dataclasses.replace(cfg, repeats=max(1, -(-cfg.repeats // cfg.rounds)), rounds=1)
    passes: dict[str, list[dict[str, Any]]] = {name: [] for name in models}
    for r in range(cfg.rounds):
        for name, (path, torch_int8) in models.items():
            log.info("timing %s (pass %d/%d)", name, r + 1, cfg.rounds)
            one = dataclasses.replace(per_pass, torch_int8=torch_int8)
            passes[name].append(benchmark_subprocess(path, one, data=data, qa=qa))
    results = {}
    for name, runs in passes.items():
        merged = dict(runs[0])
        merged["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
        merged["settings"] = dataclasses.replace(cfg, torch_int8=models[name][1]).to_dict()
        merged["latency"] = [_merge_passes([run["latency"][i] for run in runs]) for i in range(len(runs[0]["latency"]))]
        merged["questions"] = merge_question_passes([run.get("questions") for run in runs])
        results[name] = merged
        if done is not None:
            done(name, merged)
    return results


def _merge_passes(shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """One shape's timings over all passes, with each pass's p50 and their spread (max - min over the median): how
    far the machine's speed moved while the passes ran, which the percentiles of the pooled runs hide."""
    first = shapes[0]
    merged = asdict(_summarise(first["batch_size"], first["seq_len"], [x for s in shapes for x in s["samples_ms"]]))
    p50s = [round(float(s["p50_ms"]), 4) for s in shapes]
    merged["pass_p50_ms"] = p50s
    spread = (max(p50s) - min(p50s)) / float(np.median(p50s))
    merged["pass_spread"] = round(spread, 4) if len(p50s) > 1 else None
    return merged


def _main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark one model; prints one JSON line.")
    parser.add_argument("model")
    parser.add_argument("--config", default="{}", help="LatencyConfig as JSON")
    parser.add_argument("--data", default=None, help="SQuAD file whose questions are timed end to end")
    parser.add_argument("--qa", default="{}", help="QAConfig as JSON: the windows of those questions")
    args = parser.parse_args()
    try:
        qa = config_from_dict(QAConfig, json.loads(args.qa), "qa")
        result = benchmark(args.model, LatencyConfig.from_dict(json.loads(args.config)), data=args.data, qa=qa)
    except EdgeQAError as e:
        print(f"edgeqa: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
