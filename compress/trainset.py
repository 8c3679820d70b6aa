"""Training data for QA distillation: labelled windows, length-bucketed batch order, and the teacher-logit cache.

Windows are cut exactly as at inference (`bench.qa.tokenize`), so the student learns on what it will see. A window
that does not hold the whole answer is labelled with the classifier token, the usual SQuAD v1.1 convention.

Batch order is a pure function of (seed, stage, epoch): a resumed run recomputes it and skips to its position.
Batches are built from chunks of similar-length windows (dynamic padding wastes little), then shuffled.

The teacher's start/end logits for every window are computed once and kept on disk (float16), in a folder keyed
by the teacher's weights, the data and the tokenisation settings; repeated runs and sweeps over students reuse
it, and a run pointed at a cache made with other settings refuses it before training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edgeqa.bench.files import EdgeQAError, read_json, write_json
from edgeqa.bench.qa import QAConfig, batches, pad, tokenize
from edgeqa.bench.squad import load_squad

log = logging.getLogger(__name__)

CHUNK_BATCHES = 50  # windows are length-sorted within chunks of this many batches


@dataclass
class TrainSet:
    """Labelled windows, compact: token ids as int32 arrays, no character offsets once the labels are known."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    labels: np.ndarray  # (F, 2) start and end token of the answer, 0 (classifier token) when outside the window
    example_index: np.ndarray  # (F,) which question each window belongs to
    questions: int
    source: str
    limit: int | None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def load_trainset(data: str | Path, limit: int | None, tokenizer, cfg: QAConfig, chunk: int = 2000) -> TrainSet:
    """Tokenise and label `chunk` questions at a time: the tokenizer's per-token offsets for the whole SQuAD train
    set at once would take several GB."""
    dataset = load_squad(data, limit)
    examples = [e for e in dataset.examples if e.answers]  # v2.0's unanswerable questions carry no span to learn
    if not examples:
        raise EdgeQAError(f"{data}: holds no answered questions to train on")
    input_ids: list[np.ndarray] = []
    token_type_ids: list[np.ndarray] | None = []
    labels, example_index = [], []
    chunks = range(0, len(examples), chunk)
    quiet = len(examples) <= chunk
    for lo in tqdm(
        chunks, desc="tokenising", unit="chunk", disable=quiet, mininterval=1 if sys.stderr.isatty() else 60
    ):
        part = examples[lo : lo + chunk]
        f = tokenize(tokenizer, [e.question for e in part], [e.context for e in part], cfg)
        starts = np.array([e.answer_starts[0] for e in part])[f.example_index]
        ends = starts + np.array([len(e.answers[0]) for e in part])[f.example_index]
        labels.append(span_labels(f.offsets, starts, ends))
        example_index.append(f.example_index + lo)
        input_ids.extend(np.asarray(ids, dtype=np.int32) for ids in f.input_ids)
        if f.token_type_ids is None:
            token_type_ids = None
        else:
            token_type_ids.extend(np.asarray(t, dtype=np.int8) for t in f.token_type_ids)
    return TrainSet(
        input_ids,
        token_type_ids,
        np.concatenate(labels),
        np.concatenate(example_index),
        len(examples),
        str(data),
        limit,
    )


def span_labels(offsets: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Token positions of character spans [start, end) per window; (0, 0) when the window misses part of it."""
    in_context = offsets[:, :, 0] >= 0
    first = np.where(in_context, offsets[:, :, 0], np.iinfo(np.int32).max).min(1)
    last = np.where(in_context, offsets[:, :, 1], -1).max(1)
    inside = (first <= starts) & (ends <= last)
    # start: the last context token beginning at or before the answer; end: the first one ending at or after it.
    begins_before = in_context & (offsets[:, :, 0] <= starts[:, None])
    start_tok = offsets.shape[1] - 1 - np.argmax(begins_before[:, ::-1], axis=1)
    ends_after = in_context & (offsets[:, :, 1] >= ends[:, None])
    end_tok = np.argmax(ends_after, axis=1)
    labels = np.stack([start_tok, end_tok], axis=1).astype(np.int64)
    labels[~inside] = 0
    return labels


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, stage: int, epoch: int) -> list[np.ndarray]:
    """The epoch's batches (full ones only, so every rank of a data-parallel run gets its share)."""
    rng = np.random.default_rng([seed, stage, epoch])
    order = rng.permutation(len(lengths))
    chunk = batch_size * CHUNK_BATCHES
    out = []
    for lo in range(0, len(order), chunk):
        part = order[lo : lo + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        out.extend(part[i : i + batch_size] for i in range(0, len(part) - batch_size + 1, batch_size))
    return [out[i] for i in rng.permutation(len(out))]


class StepSampler:
    """Each optimiser step's share for one process, as a list of micro-batches of window indices, for steps `start`
    to `total` of a stage: the batches of `epoch_batches`, so a resumed run continues the order exactly where it
    stopped. A process takes every `world`-th window of a global batch, then cuts its share into micro-batches."""

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int,
        stage: int,
        start: int,
        total: int,
        rank: int = 0,
        world: int = 1,
        micro_batch_size: int | None = None,
    ) -> None:
        self.lengths, self.batch_size, self.seed, self.stage = lengths, batch_size, seed, stage
        self.start, self.total, self.rank, self.world, self.micro = start, total, rank, world, micro_batch_size
        self.per_epoch = len(lengths) // batch_size

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        order_epoch, order = -1, []
        for step in range(self.start, self.total):
            epoch, j = divmod(step, self.per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_batches(self.lengths, self.batch_size, self.seed, self.stage, epoch)
            mine = order[j][self.rank :: self.world]
            micro = self.micro or len(mine)
            yield [mine[i : i + micro] for i in range(0, len(mine), micro)]


class StepBatches:
    """Map-style dataset for a DataLoader over `StepSampler`: a step's micro-batches as padded int64 tensors (inputs,
    attention mask, token types), their labels and, given the logit cache, the teacher's logits cut to the batch's
    width. Built where the loader runs it: in worker processes on GPUs."""

    def __init__(self, trainset: TrainSet, pad_id: int, logits: np.ndarray | None = None) -> None:
        self.trainset, self.pad_id, self.logits = trainset, pad_id, logits

    def __getitem__(self, chunks: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        return [self.micro_batch(idx) for idx in chunks]

    def micro_batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        arrays = pad(self.trainset, idx, self.pad_id)
        batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
        batch["labels"] = torch.from_numpy(self.trainset.labels[idx])
        batch["windows"] = torch.from_numpy(np.asarray(idx, dtype=np.int64))  # which windows: for the audit trail
        if self.logits is not None:
            width = arrays["input_ids"].shape[1]
            batch["teacher_logits"] = torch.from_numpy(np.asarray(self.logits[idx, :, :width], dtype=np.float32))
        return batch


def as_is(item: Any) -> Any:
    """The loader's collate function: `StepBatches` already returns tensors (module level, so workers can pickle it)."""
    return item


# --- the teacher-logit cache -----------------------------------------------------------------------------------


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _folder_digest(folder: Path) -> str:
    """Digest of a model folder's weights, config and tokenizer files."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".txt", ".model"):
            if p.name in ("step.json", "training.json"):
                continue
            h.update(p.name.encode())
            h.update(_file_digest(p).encode())
    return h.hexdigest()


def cache_key(teacher: Path, trainset: TrainSet, cfg: QAConfig, precision: str) -> dict[str, Any]:
    """What the cached logits depend on; the folder name is a digest of it."""
    return {
        "teacher": str(teacher),
        "teacher_digest": _folder_digest(teacher),
        "data": trainset.source,
        "data_digest": _file_digest(Path(trainset.source)),
        "limit": trainset.limit,
        "max_length": cfg.max_length,
        "doc_stride": cfg.doc_stride,
        "windows": len(trainset),
        "precision": precision,
    }


def cache_folder(root: Path, key: dict[str, Any]) -> Path:
    relevant = {k: v for k, v in key.items() if k not in ("teacher", "data")}  # moving files keeps the cache
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"teacher-logits-{digest}"


def check_cache(folder: Path, key: dict[str, Any]) -> bool:
    """True when `folder` holds finished logits for `key`; raises when it was made with other settings."""
    meta = folder / "meta.json"
    if not meta.exists():
        return False
    found = read_json(meta, "teacher cache record")
    differ = [k for k in key if k not in ("teacher", "data") and found.get(k) != key[k]]
    if differ:
        details = "; ".join(f"{k}: cache has {found.get(k)!r}, this run {key[k]!r}" for k in differ)
        raise EdgeQAError(f"{folder}: teacher cache was built with other settings ({details})")
    return (folder / "logits.npy").exists()


def build_cache(
    folder: Path,
    key: dict[str, Any],
    trainset: TrainSet,
    run_teacher,
    pad_id: int,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """Fill folder/logits.npy, (windows, 2, max_length) float16, resuming a pass that was cut short."""
    if check_cache(folder, key):
        log.info("teacher logits: reusing %s", folder)
        return np.load(folder / "logits.npy", mmap_mode="r")
    folder.mkdir(parents=True, exist_ok=True)
    partial, progress_file = folder / "logits.partial.npy", folder / "progress.json"
    shape = (len(trainset), 2, key["max_length"])
    done = 0
    if partial.exists() and progress_file.exists():
        record = read_json(progress_file, "teacher cache progress")
        done = record["done"] if record.get("key") == key else 0
    arr = np.lib.format.open_memmap(partial, mode="r+" if done else "w+", dtype=np.float16, shape=shape)
    all_batches = list(batches(trainset, batch_size, pad_id, ("input_ids", "attention_mask", "token_type_ids")))
    bar = tqdm(
        total=len(all_batches),
        initial=done,
        desc="teacher logits",
        unit="batch",
        disable=not progress,
        mininterval=1 if sys.stderr.isatty() else 60,
    )
    for b, (idx, inputs) in enumerate(all_batches):
        if b < done:
            continue
        start, end = run_teacher(inputs)
        n = start.shape[1]
        arr[idx, 0, :n] = start
        arr[idx, 1, :n] = end
        if (b + 1) % 50 == 0 or b + 1 == len(all_batches):
            arr.flush()
            write_json(progress_file, {"key": key, "done": b + 1})
        bar.update(1)
    bar.close()
    del arr
    partial.replace(folder / "logits.npy")
    progress_file.unlink(missing_ok=True)
    write_json(folder / "meta.json", key)
    return np.load(folder / "logits.npy", mmap_mode="r")
