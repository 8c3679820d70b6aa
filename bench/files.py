"""User-facing errors, settings checked against their dataclass, JSON reading with clear messages, atomic writes.

Every artefact edgeqa writes goes to a temporary name beside its target and is renamed into place, so a killed
run never leaves a half-written file or folder that a resumed run would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import json
import logging
import os
import re
import shutil
import tempfile
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EdgeQAError(Exception):
    """An expected mistake in the user's input: the CLI prints it as one line and exits non-zero."""


def known_fields(cls, raw: dict[str, Any], what: str) -> dict[str, Any]:
    """`raw` as keyword arguments for the dataclass `cls`, refusing keys it does not have, by name."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise EdgeQAError(f"unknown {what} setting(s): {', '.join(unknown)} (allowed: {', '.join(sorted(known))})")
    return dict(raw)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a setting's value has its field's type: bool is not a number, an int is a float, lists pass as tuples."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        return isinstance(value, tuple | list) and all(_fits(v, args[0]) for v in value)
    return True  # nested configs and mappings check themselves


def check_field_types(config: Any, what: str) -> None:
    """Refuse a dataclass whose settings have the wrong type (a recipe's `per_channel: maybe`), naming the field;
    called first in a config's __post_init__, so range checks after it compare numbers with numbers."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _fits(value, hints[f.name]):
            wanted = str(hints[f.name]).replace("typing.", "").replace("<class '", "").replace("'>", "")
            raise EdgeQAError(f"{what}.{f.name} should be {wanted}, got {value!r}")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Read a plain or gzipped JSON file, turning every way it can fail into one EdgeQAError line."""
    path = Path(path)
    if not path.exists():
        raise EdgeQAError(f"{path}: no such {what}")
    if path.is_dir():
        raise EdgeQAError(f"{path}: is a folder, expected a {what}")
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except PermissionError as e:
        raise EdgeQAError(f"{path}: cannot read {what}: permission denied") from e
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise EdgeQAError(f"{path}: cannot read {what}: {e}") from e
    except UnicodeDecodeError as e:
        raise EdgeQAError(f"{path}: {what} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise EdgeQAError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e


# A temporary name carries its writer's process id, so that a later run can tell one left by a killed writer (its
# process gone) from one that another live process is still writing: `.TARGET.PID.RANDOM.tmp` beside its target.
TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}\.tmp$")
# Errors that mean the output cannot be written where it was asked for, whatever wrote it.
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
NEARLY_FULL = 256 * 1024  # bytes free below which a failed write is put down to a full disk


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporary files and folders under `folder` whose writer is gone (a killed run's): a resumed run
    starts from finished artefacts only. Those of live processes are left to finish."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in list(folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        match = TEMPORARY.match(entry.name)
        if match is None or _alive(int(match["pid"])) or not entry.exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.info("removed %d temporaries left by killed runs under %s", len(removed), folder)
    return removed


def _final(path: Path) -> Path:
    """What a path is the temporary of, for messages: a step's folder is written inside its staging folder."""
    while match := TEMPORARY.match(path.name):
        path = path.parent / match["target"]
    return path


def _out_of_space(folder: Path) -> bool:
    """Whether the file system holding `folder` is (all but) full."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < NEARLY_FULL


def _write_error(error: Exception, target: Path, tmp: Path) -> EdgeQAError | None:
    """An error from writing `target` (through `tmp`) as one line, or None for an error of another kind. Some writers
    do not say that the disk is full (onnx's C++ serialiser truncates the file and the next reader fails on it), so
    any failure while the target's file system is full is told as a full disk, with what failed after it."""
    if isinstance(error, EdgeQAError):
        return None
    if isinstance(error, OSError):
        written = str(error.filename or "").startswith(str(tmp))
        if error.errno in FULL_DISK or (error.errno in NOT_WRITABLE and written):
            return EdgeQAError(f"{_final(target)}: cannot write: {error.strerror or error}")
    if _out_of_space(tmp.parent):
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return EdgeQAError(f"{_final(target)}: cannot write: No space left on device ({type(error).__name__}: "
                           f"{first_line})")  # fmt: skip
    return None


@contextlib.contextmanager
def _told_as_write_errors(target: Path, tmp: Path) -> Iterator[None]:
    """Re-raise a failure to write `target` through `tmp` as its one-line EdgeQAError; others pass as they are."""
    try:
        yield
    except Exception as e:
        error = _write_error(e, target, tmp)
        if error is None:
            raise
        raise error from e


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on failure delete it, so `path`
    holds either its previous content or the new one in full. A full disk or a read-only target is one error."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, recursive=False)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise EdgeQAError(f"{_final(path)}: cannot write: {e.strerror or e}") from e
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o644)
    try:
        with _told_as_write_errors(path, tmp_path):
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path`, on failure it is removed and `path`
    keeps what it held. A full disk or a read-only target is one error naming `path`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EdgeQAError(f"{path}: output path exists and is not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, recursive=False)
        tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise EdgeQAError(f"{_final(path)}: cannot create output folder: {e.strerror or e}") from e
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished folder should read like any other
    try:
        with _told_as_write_errors(path, tmp):
            yield tmp
            if path.exists():  # the old folder moves aside first: a kill now leaves a temporary, never a mix
                old = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent))
                os.replace(path, old / path.name)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def removed_on_failure(path: str | Path) -> Iterator[None]:
    """On failure inside the block, remove what of `path` did not exist before it (the folder and the parents that
    check_writable_dir created), so a command that fails leaves no empty or half-filled output folder behind."""
    path = Path(path).absolute()
    missing = [p for p in (path, *path.parents) if not p.exists()]  # deepest first; the last is the topmost made
    try:
        yield
    except BaseException:
        if missing:
            shutil.rmtree(missing[-1], ignore_errors=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_writable_dir(path: str | Path) -> Path:
    """Fail early, before any work, when an output folder cannot be created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EdgeQAError(f"{path}: output path exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeQAError(f"{path}: cannot create output folder: {e.strerror or e}") from e
    if not os.access(path, os.W_OK | os.X_OK):
        why = "read-only file system" if os.statvfs(path).f_flag & os.ST_RDONLY else "permission denied"
        raise EdgeQAError(f"{path}: output folder is not writable ({why})")
    return path
