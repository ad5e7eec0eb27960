"""Recipe configs from YAML: `load_recipe_config` reads a file, applies `key=value` overrides
(`merge`: dotted keys, `none` removes a modality or head) and validates the result before any work;
YAML aliases that would expand past `MAX_CONFIG_VALUES` values are refused."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .parsing import BOOL_WORDS, NONE_WORDS, from_dict, split_key_value


def load_recipe_config(cls: type, path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """Read a recipe's YAML config, apply `key=value` overrides (dotted keys reach nested values;
    values parse as YAML, `none` as null) and validate it: a bad key fails here, before any work.
    A config whose YAML aliases expand to more than `MAX_CONFIG_VALUES` values is refused."""

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(), UniqueKeyLoader) or {}
    except DuplicateKey as e:
        raise ConfigError(f"{path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    except RecursionError as e:
        raise ConfigError(f"{path}: nested too deeply to be a config") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got a {type(data).__name__}")
    check_config_size(data, str(path))
    for item in overrides:
        key, value = split_key_value(item)
        word = value.strip().lower()
        # YAML 1.1 reads yes/no/on/off as booleans: keep them as words (precision=no); bool keys accept them
        parsed = None if word in NONE_WORDS else value.strip() if word in BOOL_WORDS else yaml.safe_load(value)
        check_config_size(parsed, key)
        data = merge(data, {key: parsed})
    return from_dict(cls, data, "")


class DuplicateKey(yaml.YAMLError):
    """A mapping of a YAML config gives one key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that gives one key twice (the safe loader keeps the
    last one silently); a key a `<<` merge brings in may still be given again."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.checked: set[int] = set()  # the mapping nodes whose own keys were checked (a merge rewrites them)

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """Check a mapping's own keys once, before any `<<` merge adds keys to it (also to an anchored
        mapping another one merges before it is built), then merge as the safe loader does."""
        if id(node) not in self.checked:
            self.checked.add(id(node))
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    line = key_node.start_mark.line + 1
                    raise DuplicateKey(
                        f"line {line}: the key {key!r} is given twice in one mapping (YAML would keep the last)"
                    )
                seen.add(key)
        super().flatten_mapping(node)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any], _prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Deep-merge `overrides` into `base`; dotted keys (`backbone.depth`) reach nested values,
    and a `None` value for a modality or head removes it (`{"modalities": {"video": None}}` or
    `{"modalities.video": None}`)."""
    out = plain_copy(base)  # deep copy of plain data, refusing alias bombs
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        full = (*_prefix, *parents)  # where `leaf` sits in the whole config
        node: Any = out
        for p in parents:
            if isinstance(node, list) and p.isdigit() and int(p) < len(node):  # stages.0.steps
                node = node[int(p)]
            elif isinstance(node, dict):
                node = node.setdefault(p, {})
            else:
                raise ConfigError(f"{key}: {p!r} is not a mapping key or a list index")
        if isinstance(node, list):
            if not (leaf.isdigit() and int(leaf) < len(node)):
                raise ConfigError(f"{key}: {leaf!r} is not an index of a list of {len(node)}")
            node[int(leaf)] = value
        elif isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = merge(node[leaf], value, (*full, leaf))
        elif value is None and full and full[-1] in ("modalities", "heads"):
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


MAX_CONFIG_VALUES = 100_000  # far more values than any real config holds


def check_config_size(data: Any, where: str) -> int:
    """The number of values in `data` once shared objects (YAML aliases) are expanded, counted
    without expanding them; a `ConfigError` naming `where` when it exceeds `MAX_CONFIG_VALUES` or
    when the data contains itself."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()

    def count(x: Any) -> int:
        if not isinstance(x, (Mapping, list, tuple)):
            return 1
        if id(x) in sizes:
            return sizes[id(x)]
        if id(x) in open_ids:
            raise ConfigError(f"{where}: a value contains itself (a YAML alias inside its own anchor)")
        open_ids.add(id(x))
        n = 1 + sum(count(v) for v in (x.values() if isinstance(x, Mapping) else x))
        open_ids.discard(id(x))
        sizes[id(x)] = n
        return n

    try:
        total = count(data)
    except RecursionError as e:
        raise ConfigError(f"{where}: nested too deeply to be a config") from e
    if total > MAX_CONFIG_VALUES:
        raise ConfigError(
            f"{where}: expands to {total:,} values, more than the {MAX_CONFIG_VALUES:,} a config may "
            "hold (YAML aliases repeating a block?)"
        )
    return total


def plain_copy(data: Any, limit: int = MAX_CONFIG_VALUES) -> Any:
    """A deep copy of plain config data as JSON would give it (tuples become lists, mapping keys
    strings), refusing to expand shared objects past `limit` values (a `ConfigError`)."""
    budget = [limit]

    def copy(x: Any) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise ConfigError(f"config: expands to more than {limit:,} values (YAML aliases repeating a block?)")
        if isinstance(x, Mapping):
            return {k if isinstance(k, str) else json.dumps(k): copy(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [copy(v) for v in x]
        return x

    try:
        return copy(data)
    except RecursionError as e:
        raise ConfigError("config: nested too deeply (or contains itself)") from e
