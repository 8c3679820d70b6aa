"""Checkpoints of the training loop: everything a killed run needs to continue bit for bit (weights, optimiser,
schedule, every process's RNG state, stage and step, the record so far), written atomically, and refused when
they were made with other settings. `dist` is the loop's `train.Dist` (rank, world, device)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from edgeqa.bench.files import EdgeQAError, atomic_file

log = logging.getLogger(__name__)


def gather_rng(dist) -> list:
    """Every process's RNG state (dropout masks differ per process), gathered to the first for the checkpoint."""
    mine = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if dist.device != "cpu" else None}
    if dist.world == 1:
        return [mine]
    out: list = [None] * dist.world
    torch.distributed.all_gather_object(out, mine)
    return out


def save_checkpoint(
    path, record, trainee, optimizer, scheduler, stage, step, best, history, starts, seconds, rngs, extra=None
) -> None:
    state = {
        "config": json.loads(json.dumps(record)),
        "model": trainee.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer else None,
        "scheduler": scheduler.state_dict() if scheduler else None,
        "rng": rngs,  # per process; None at a stage boundary, where each stage seeds afresh
        "stage": stage,
        "step": step,
        "best": best,
        "history": history,
        "starts": starts,
        "seconds": seconds,
        "hooks": extra,
    }
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, record: dict) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise EdgeQAError(f"{path}: unreadable checkpoint ({e}); delete it to start over") from e
    if state.get("config") != json.loads(json.dumps(record)):
        raise EdgeQAError(f"{path}: checkpoint of a run with other settings; delete it or change the step's name")
    log.info("resuming from %s: stage %d, step %d", path, state["stage"], state["step"])
    return state


def restore(state: dict, trainee, optimizer, scheduler, dist) -> None:
    trainee.load_state_dict(state["model"])
    if state["optimizer"] is None:  # saved at a stage boundary: the new stage starts fresh
        return
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if len(state["rng"]) != dist.world:
        raise EdgeQAError(f"checkpoint was saved by {len(state['rng'])} processes; resume it with as many")
    rng = state["rng"][dist.rank]
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"] is not None and dist.device != "cpu":
        torch.cuda.set_rng_state(rng["cuda"])
