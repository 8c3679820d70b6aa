"""Made-model identity: what makes a step's output folder reusable, and the history of its step.json record.

Every step that makes a model writes a folder under runs/<name>/models/ atomically, its settings in step.json
landing in the same rename; a rerun skips a step whose folder exists with the same settings and refuses one made
with other settings, so a killed run resumes with the same command and ends with the same report. Each made folder
gets an identity (`made`): a folder made from a source that was made again since is made again, and scores and
timings are cached per identity, so a remade model never inherits the numbers of the one it replaced.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeqa.bench.files import EdgeQAError, atomic_dir, read_json, write_json
from edgeqa.bench.serial import RECORD_VERSION, upgrade

log = logging.getLogger(__name__)


def made_id(folder: Path) -> str | None:
    """The identity of one making of a step's output folder (None for folders no step made, such as the teacher)."""
    record = folder / "step.json" if folder.is_dir() else folder.parent / "step.json"
    return read_json(record, "step record").get("made") if record.exists() else None


PATH_SETTINGS = ("from", "teacher")  # the models a step reads, by path


def same_settings(a: dict[str, Any], b: dict[str, Any], paths: tuple[str, ...] = PATH_SETTINGS) -> bool:
    """Whether two records ask for the same thing, the files they name (`paths`) compared by where they are, not how
    the path was spelt: the teacher given as ../shared/... in one run and /work/shared/... in the next is one."""

    def placed(record: dict[str, Any]) -> dict[str, Any]:
        return {k: os.path.realpath(v) if k in paths and isinstance(v, str) else v for k, v in record.items()}

    return placed(a) == placed(b)


def make_once(
    out: Path,
    kind: str,
    settings: dict[str, Any],
    make: Callable[[Path], None],
    remake_on_change: bool = False,
    description: str = "",
) -> Path:
    """Run `make(out)` unless `out` already holds this step's output made with the same settings from the same
    making of its source. Other settings are refused, unless `remake_on_change` (settings the machine chose, such
    as an automatic preset, rather than the recipe). `description`, the step's own words for what it made, is
    kept in the record beside the settings, not compared."""
    record = {"step": kind, **settings}
    source_made = made_id(Path(settings["from"])) if "from" in settings else None
    if (out / "step.json").exists():
        previous = upgrade(read_json(out / "step.json", "step record"))
        made_from = previous.pop("source_made", None)
        for key in ("made", "seconds", "description"):  # what a making was, not what was asked
            previous.pop(key, None)
        if not same_settings(previous, record) and not remake_on_change:
            raise EdgeQAError(
                f"{out}: was made by a step with other settings; delete the folder or give the step a new name"
            )
        if not same_settings(previous, record):
            log.info("step %s %s: this machine chooses other settings; making it again", kind, out.name)
        elif made_from == source_made:
            log.info("step %s %s: already done, skipping", kind, out.name)
            return out
        else:
            log.info("step %s %s: its source %s was made again since; making it again", kind, out.name,
                     settings["from"])  # fmt: skip
    # The output and its record land in one rename: a folder under models/ without step.json is never seen, and a
    # step that fails (a full disk, say) leaves the folder it was to replace as it was.
    with atomic_dir(out) as stage:
        started = time.perf_counter()
        make(stage)
        seconds = round(time.perf_counter() - started, 1)
        said = {"description": description} if description else {}
        write_json(stage / "step.json", {"version": RECORD_VERSION, **record, **said, "source_made": source_made,
                                         "made": uuid.uuid4().hex, "seconds": seconds})  # fmt: skip
    return out


def making_times(path: Path) -> list[dict[str, Any]]:
    """The steps that made a model, first to last, with the seconds each took: its own and its sources'. A step
    that was skipped because its folder existed keeps the time of the run that made it. A training step's time is
    its training's, which counts every start of a killed and resumed run (step.json times the last start only)."""
    chain = []
    for _ in range(32):  # a chain of steps, never a cycle
        step = path / "step.json" if path.is_dir() else path.parent / "step.json"
        if not step.exists():
            break
        record = read_json(step, "step record")
        seconds = record.get("seconds")
        training = step.parent / "training.json"
        if seconds is not None and training.exists():
            seconds = max(seconds, read_json(training, "training record").get("train_seconds") or 0.0)
        chain.append({"step": record.get("step"), "name": step.parent.name, "seconds": seconds})
        if "from" not in record:
            break
        path = Path(record["from"])
    return chain[::-1]


def inherited_record(path: Path, filename: str, through: tuple[str, ...]) -> dict | None:
    """`filename` (prune.json, quantization.json) of a model or of the model it was made from by `through` steps.

    Steps outside `through` end the walk: a retrained model's weights are new, and a re-quantized one has its own
    settings, so an older record no longer applies.
    """
    for _ in range(32):  # a chain of steps, never a cycle; the bound only guards against a hand-edited step.json
        if (path / filename).exists():
            return read_json(path / filename, filename)
        step = path / "step.json"
        record = read_json(step, "step record") if step.exists() else {}
        if record.get("step") not in through or "from" not in record:
            return None
        path = Path(record["from"])
    return None
