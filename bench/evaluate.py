"""Predict a SQuAD file with a model and score it: the one place `edgeqa eval` and recipes get EM/F1 from."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from edgeqa.bench.engines import answers_depend_on_batch, load_qa_model, predict
from edgeqa.bench.files import EdgeQAError, check_writable_dir, removed_on_failure, write_json
from edgeqa.bench.metric import score
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.squad import load_squad

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16  # for models whose answers do not depend on their batch


def evaluate(
    model: str | Path,
    data: str | Path,
    limit: int | None = None,
    torch_int8: bool = False,
    cfg: QAConfig = QAConfig(),
    batch_size: int | None = None,
    threads: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """EM/F1 of `model` on `data` (first `limit` questions); writes predictions.json and metrics.json to out_dir.

    `batch_size` None: 1 for a model whose answers depend on its batch (dynamic int8), as it is deployed, and
    DEFAULT_BATCH_SIZE for the rest. metrics.json records the batch size used and whether answers depend on it.
    """
    with removed_on_failure(out_dir) if out_dir is not None else contextlib.nullcontext():
        if out_dir is not None:
            check_writable_dir(out_dir)
        return _evaluate(model, data, limit, torch_int8, cfg, batch_size, threads, out_dir, progress)


def _evaluate(
    model: str | Path,
    data: str | Path,
    limit: int | None,
    torch_int8: bool,
    cfg: QAConfig,
    batch_size: int | None,
    threads: int | None,
    out_dir: str | Path | None,
    progress: bool,
) -> dict[str, Any]:
    """`evaluate` once its output folder exists: whatever fails in here removes the folder again, if it was new."""
    depends = answers_depend_on_batch(model, torch_int8)
    if batch_size is None:
        batch_size = 1 if depends else DEFAULT_BATCH_SIZE
    if batch_size < 1:
        raise EdgeQAError(f"batch size must be positive, got {batch_size}")
    dataset = load_squad(data, limit)
    qa_model = load_qa_model(model, threads, torch_int8=torch_int8)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    predictions = predict(
        qa_model, dataset.examples, cfg, batch_size, allow_null=dataset.is_v2, progress=progress, timings=timings
    )
    seconds = time.perf_counter() - t0
    metrics = score(dataset, predictions)
    metrics.update(
        model=str(model),
        backend=qa_model.engine.backend,
        data=str(data),
        squad_version=dataset.version,
        limit=limit,
        settings=cfg.to_dict(),
        batch_size=batch_size,
        batch_dependent=depends,
        threads=getattr(qa_model.engine, "threads", None),
        seconds=round(seconds, 3),
        timings={k: round(v, 3) for k, v in timings.items()},
        # Tokenisation and span search against the model's own time: the price of the Python around the model.
        overhead_share=round((timings["tokenize_s"] + timings["postprocess_s"]) / max(timings["model_s"], 1e-9), 4),
    )
    if out_dir is not None:
        write_json(Path(out_dir) / "predictions.json", predictions)
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics
