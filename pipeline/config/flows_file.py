"""Reading ``flows.yaml`` and ``--set`` values: YAML that refuses duplicate keys, errors in one line,
flow names that are safe folder names. ``pipeline.config`` turns what is read into typed configs.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

# A flow's name is a folder of runs_dir: one path component that cannot climb out of it.
FLOW_NAME = re.compile(r"[A-Za-z0-9_.-]+")
FLOW_NAME_RULE = "one path component of letters, digits, '_', '.' and '-' ([A-Za-z0-9_.-]+), not '.' or '..'"


class ConfigError(ValueError):
    """flows.yaml or a --set override is malformed or names something that does not exist."""


def check_flow_name(name: Any) -> None:
    if not isinstance(name, str) or not FLOW_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"flow name {name!r} is not {FLOW_NAME_RULE}; rename the flow")


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted`` = ``a.b.c``, creating the sections on the way."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r} at line {line} (first at line {first})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping: PyYAML keeps the last silently, so
    a setting written twice would quietly undo the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` is meant to be overridden by the keys beside it
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_line
            except TypeError:  # an unhashable key: the base class reports it
                continue
            line = key_node.start_mark.line + 1
            if seen:
                raise _DuplicateKey(key, line, first_line[key])
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line for a YAML error (PyYAML's own text spans several, with a snippet of the input)."""
    if isinstance(error, _DuplicateKey):
        return f"{error}; give each key once, the second would silently replace the first"
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    overrides = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set train.epochs=3")
        try:
            value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML ({_yaml_problem(error)})") from error
        overrides.append((key.strip(), value))
    return overrides


def read_flows(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such flows file; pass the path of flows.yaml (the repo ships one)")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror}); check its permissions") from error
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} on line {line}); save it as UTF-8"
        ) from error
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(error)}); fix it there") from error
    if not isinstance(document, Mapping) or not isinstance(document.get("flows"), Mapping) or not document["flows"]:
        raise ConfigError(f"{path}: expected a top-level 'flows:' mapping of flow names to settings")
    for name in document["flows"]:
        try:
            check_flow_name(name)
        except ValueError as error:
            raise ConfigError(f"{path}: {error}") from None
    return dict(document["flows"])


def copy_tree(tree: Any) -> Any:
    """A copy of a tree of mappings and lists that shares no container with it."""
    if isinstance(tree, Mapping):
        return {k: copy_tree(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [copy_tree(v) for v in tree]
    return tree
