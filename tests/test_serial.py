"""The one serialiser (bench/serial.py): configs to JSON-ready dicts and back, and fields added later left out at
their defaults so that older records keep matching."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Tuple  # noqa: UP035 (a tuple hint without element types, below)

import pytest

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.serial import added_later, config_from_dict, config_to_dict, upgrade


@dataclass(frozen=True)
class Inner:
    weights: tuple[float, ...] = (1.0,)
    by_layer: dict[int, int] | None = None


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner = Inner()
    stages: tuple[Inner, ...] = ()
    limit: int | None = None
    late: bool = added_later(False)


def test_a_nested_config_becomes_plain_json_data():
    cfg = Outer("x", Inner((0.5, 0.5), {2: 5}), (Inner(), Inner((2.0,))), limit=3)
    expected = {"name": "x", "inner": {"weights": [0.5, 0.5], "by_layer": {"2": 5}},
                "stages": [{"weights": [1.0], "by_layer": None}, {"weights": [2.0], "by_layer": None}],
                "limit": 3}  # fmt: skip
    assert config_to_dict(cfg) == expected  # written out by hand; `late` at its default is left out
    assert json.loads(json.dumps(config_to_dict(cfg))) == expected


def test_a_field_added_later_appears_only_when_it_is_set():
    assert "late" not in config_to_dict(Outer("x"))
    assert config_to_dict(Outer("x", late=True))["late"] is True
    assert config_from_dict(Outer, {"name": "x"}, "outer") == Outer("x")  # an older record reads as its default


def test_a_dict_reads_back_to_the_same_config_with_tuples_and_nested_configs():
    cfg = Outer("x", Inner((0.5,), None), (Inner((2.0, 3.0)),), limit=None, late=True)
    back = config_from_dict(Outer, json.loads(json.dumps(config_to_dict(cfg))), "outer")
    assert back == cfg and isinstance(back.stages, tuple) and isinstance(back.stages[0].weights, tuple)
    with pytest.raises(EdgeQAError, match=r"unknown outer setting\(s\): colour \(allowed: inner, late, limit, name"):
        config_from_dict(Outer, {"name": "x", "colour": "red"}, "outer")
    with pytest.raises(EdgeQAError, match=r"unknown outer.inner setting\(s\): weight"):
        config_from_dict(Outer, {"name": "x", "inner": {"weight": [1.0]}}, "outer")


def test_older_step_records_are_upgraded_here_and_newer_ones_refused():
    assert upgrade({"step": "prune", "refit": True})["refit_to"] == "matrix"  # version 1: the only refit there was
    assert upgrade({"version": 2, "step": "prune", "refit": True}) == {"step": "prune", "refit": True}
    with pytest.raises(EdgeQAError, match="newer than this edgeqa reads"):
        upgrade({"version": 99, "step": "export"})


def test_optional_nested_configs_tuples_and_plain_values_read_back_as_declared():
    @dataclass(frozen=True)
    class Holder:  # declared here, so that `added_later` runs inside the test
        late: int = added_later(7)
        inner: Inner | None = None
        stages: tuple[Inner, ...] | None = None
        raw: Tuple = ()  # noqa: UP006
        anything: Any = None

    back = config_from_dict(Holder, {"inner": {"weights": [2.0], "by_layer": {"2": 5}}, "stages": [{}, {}],
                                     "raw": [1, "a"], "anything": [1, 2]}, "holder")  # fmt: skip
    assert back == Holder(7, Inner((2.0,), {"2": 5}), (Inner(), Inner()), (1, "a"), [1, 2])
    assert isinstance(back.inner, Inner) and isinstance(back.stages, tuple) and isinstance(back.raw, tuple)
    assert isinstance(back.anything, list) and isinstance(back.inner.by_layer, dict)
    assert config_from_dict(Holder, {"inner": None, "stages": None}, "holder") == Holder()
    assert config_to_dict(Holder()) == {"inner": None, "stages": None, "raw": [], "anything": None}
    assert config_to_dict(Holder(late=8))["late"] == 8 and Holder().late == 7
    with pytest.raises(EdgeQAError, match=r"unknown holder\.stages setting\(s\): weight"):
        config_from_dict(Holder, {"stages": [{"weight": 1}]}, "holder")
