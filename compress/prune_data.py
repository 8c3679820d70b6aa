"""The training windows that pruning itself reads (gradient importance, input statistics, refits): seeded random
batches of labelled windows, drawn from a `compress.trainset.TrainSet`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from edgeqa.bench.qa import pad

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def label_batches(trainset, n: int, size: int = 16, seed: int = 0) -> Iterator[dict[str, Any]]:
    """n batches of labelled training windows drawn at random (seeded), as model inputs plus `labels`.

    A random draw, not the first windows: those would be the longest contexts only, a biased sample of the loss.
    """
    import torch

    pick = np.random.default_rng(seed).choice(len(trainset), size=min(n * size, len(trainset)), replace=False)
    pick = pick[np.argsort(-trainset.lengths[pick], kind="stable")]  # similar lengths together: less padding
    for lo in range(0, len(pick), size):
        idx = pick[lo : lo + size]
        arrays = pad(trainset, idx, 0)
        batch = {k: torch.from_numpy(arrays[k]) for k in INPUT_NAMES if k in arrays}
        batch["labels"] = torch.from_numpy(trainset.labels[idx])
        yield batch


def model_inputs(batch: dict) -> dict:
    """A labelled batch without its labels: what the model's forward takes."""
    return {k: v for k, v in batch.items() if k != "labels"}


def input_batches(trainset, n: int, seed: int = 0) -> list[dict]:
    """n batches of model inputs (no labels), for statistics of the layers' inputs."""
    return [model_inputs(b) for b in label_batches(trainset, n, seed=seed)]
