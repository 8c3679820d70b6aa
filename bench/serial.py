"""One serialiser for every config and record: `config_to_dict` and `config_from_dict` for the frozen config
dataclasses (recipe sections, step settings, the API's configs), and `upgrade`, where every older record layout
is brought up to the current one.

What a config serialises to is part of the identity of everything made with it (step.json, checkpoints, caches):
a field added later is declared with `added_later(default)`, and left out of the dict while it holds that default,
so records written before it existed still match. Records carry `version`; an older version is upgraded here, as
what the runs that wrote it did.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from edgeqa.bench.files import EdgeQAError, known_fields

RECORD_VERSION = 2  # step.json's layout; version 1 records carry no "version"
ADDED_LATER = "added_later"


def added_later(default: Any) -> Any:
    """A config field added after records were written: left out of the dict at `default`, so they keep matching."""
    return dataclasses.field(default=default, metadata={ADDED_LATER: True})


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON-ready data: nested configs as dicts, tuples as lists, mapping keys as strings,
    fields added later left out at their defaults."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get(ADDED_LATER) and value == f.default:
            continue
        out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def config_from_dict(cls: type, raw: dict[str, Any], what: str) -> Any:
    """The config `cls` from its dict (a recipe section or a record): unknown keys refused by name, nested configs
    and tuples rebuilt from the field types; the config's own checks then run as it is made."""
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in known_fields(cls, raw, what).items():
        values[name] = _typed(value, hints[name], f"{what}.{name}")
    return cls(**values)


def _typed(value: Any, hint: Any, what: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        hint = next((a for a in args if a is not type(None)), hint)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value, what)
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(_typed(v, args[0], what) for v in value) if args else tuple(value)
    return value


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A step record in the current layout, whatever layout it was written in."""
    record = dict(record)
    version = record.pop("version", 1)
    if version > RECORD_VERSION:
        raise EdgeQAError(f"step record version {version} is newer than this edgeqa reads ({RECORD_VERSION})")
    if version == 1 and record.get("step") == "prune":
        record = upgrade_prune_settings(record)
    return record


def upgrade_prune_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Recorded prune settings (step.json, prune.json) as version 2 writes them. Version 1 predates `initial`,
    `refit` and `refit_to`; its runs did what their absence meant: no initial pruning, no refit, and a refit (once
    it existed, before `refit_to`) fitted each matrix."""
    settings = {"initial": 0.0, "refit": False, "refit_batches": 32, **settings}
    settings.setdefault("refit_to", "matrix" if settings["refit"] else "model")
    return settings


__all__ = ["RECORD_VERSION", "added_later", "config_from_dict", "config_to_dict", "upgrade", "upgrade_prune_settings"]
