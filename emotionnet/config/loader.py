"""Typed configuration: YAML files and dotted overrides loaded into nested dataclasses.

Every key is checked against the dataclass fields and every value against the field's type, so a typo
or a wrong type fails at start-up with one sentence that lists the valid keys.
"""

from __future__ import annotations

import dataclasses
import os
import re
import reprlib
import stat
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from emotionnet.errors import UserError

T = TypeVar("T")

# A config file is read whole before it is parsed: a few KB in practice, and parsing 60 MB takes minutes.
MAX_CONFIG_BYTES = 1_000_000
# Values (scalars, lists, mappings) a document may hold with its aliases expanded: a config has a few
# hundred; nine aliases of nine aliases ... (an "alias bomb") are billions once written out or checked.
MAX_YAML_VALUES = 10_000

_shown = reprlib.Repr()  # values in messages: a long string or a big list is cut short
_shown.maxstring = _shown.maxother = 80


class ConfigError(UserError):
    """A configuration file or override that does not match the schema."""


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans: only true/false. YAML 1.1 would read `mixed_precision: no` as False.
    Documents whose aliases expand to more than MAX_YAML_VALUES values are refused before construction."""

    def compose_document(self) -> yaml.Node:
        root = super().compose_document()
        if _expanded_size(root, {}) > MAX_YAML_VALUES:
            raise _AliasBombError(f"its aliases expand to more than {MAX_YAML_VALUES:,} values")
        return root


class _AliasBombError(yaml.YAMLError):
    """A document whose aliases expand to more than MAX_YAML_VALUES values."""


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values under `node` with every alias expanded, counting each shared node once per use (memoized by
    identity, so this is linear in the document's size); a node that contains itself counts as too many."""
    if id(node) not in sizes:
        sizes[id(node)] = MAX_YAML_VALUES + 1  # until its children are counted: a cycle is too many
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _parse_yaml(text: str, source: str):
    """`text` parsed, or ConfigError naming `source` (a config file, an override) and what is wrong."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except _AliasBombError as err:
        raise ConfigError(f"{source}: {err}; write the values out instead") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}") from err
    except RecursionError:
        raise ConfigError(f"{source} nests its lists or mappings too deeply") from None


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against type `tp` (a dataclass, scalar, Optional, Literal or list), returning it typed."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {_shown.repr(value)} matches none of {tp}"
        )
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {_shown.repr(value)} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {_shown.repr(value)}")
        (item_type, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} keys, got {_shown.repr(value)}")
        return build(tp, value, where)
    if tp is Any or (tp in (dict, list) and isinstance(value, tp)):
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_shown.repr(value)}")
        key_type, value_type = typing.get_args(tp)
        return {
            _coerce(k, key_type, f"{where} key {_shown.repr(k)}"): _coerce(v, value_type, f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {_shown.repr(value)}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `3e-4` (no dot) as a string; accept the form people write.
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str) and not isinstance(value, bool) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {_shown.repr(value)}")


def build(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Instantiate dataclass `cls` from a (nested) mapping, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in values if k not in names]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}; valid keys{' of ' + where if where else ''}: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts (YAML/JSON-safe)."""
    return dataclasses.asdict(config)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 1e-3}} -> {'optim.lr': 1e-3}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=3e-4' -> ('optim.lr', 0.0003); the value is parsed as YAML (numbers, bools, null, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    return key.strip(), (_parse_yaml(raw, f"override {_shown.repr(text)}") if raw.strip() else "")


def load(cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Defaults of `cls`, updated by the YAML file at `path`, then by `key=value` overrides."""
    tree: dict[str, Any] = to_dict(cls())
    if path is not None:
        _merge(tree, read_yaml(path))
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return build(cls, tree)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping, or ConfigError naming the file and what is wrong with it."""
    path = Path(path)
    loaded = _parse_yaml(_read_text(path), f"config file {path}") or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(loaded).__name__}")
    return loaded


_DEVICES = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}  # /dev/zero never ends


def _read_text(path: Path) -> str:
    """A config file's text: a regular file (or a pipe) of at most MAX_CONFIG_BYTES bytes of UTF-8."""
    try:
        with open(path, "rb") as f:
            kind = _DEVICES.get(stat.S_IFMT(os.fstat(f.fileno()).st_mode))
            if kind:
                raise ConfigError(f"config file {path} is {kind}, not a YAML file")
            data = f.read(MAX_CONFIG_BYTES + 1)
            size = max(len(data), os.fstat(f.fileno()).st_size)
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a YAML file") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is {size / 1e6:.1f} MB, over the limit of {MAX_CONFIG_BYTES / 1e6:g} MB"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        byte = err.object[err.start]
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{byte:02x} at offset {err.start}); save it as UTF-8"
        ) from None


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
