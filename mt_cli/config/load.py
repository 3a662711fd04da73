"""Loading a config: YAML (safe, exponent floats, no duplicate keys) + `--set` overrides → a validated Config."""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Literal

import yaml

from mt_cli.config.schema import Config, ConfigError, _check, _check_folder_name


class _Loader(yaml.SafeLoader):
    """Safe YAML that also reads 3e-4 and 1E-3 as numbers (YAML 1.1 makes them strings; `--set train.lr=3e-4`)."""


def _no_duplicate_keys(loader, node, deep=False):
    # merge keys (<<) may bring keys that the mapping then overrides: only the explicit ones must be unique
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
    dup = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    if dup is not None:  # YAML would silently keep the last one
        raise yaml.constructor.ConstructorError(None, None, f"duplicate key {dup!r}", node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                        lambda loader, node: _no_duplicate_keys(loader, node, deep=True))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+0123456789."))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def _coerce(value, tp, key: str):
    """Check `value` against the annotation `tp`; return it converted (int→float, list→tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        _check(value in args, key, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), key, f"must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key + ".")
    if origin in (list, tuple):
        _check(isinstance(value, (list, tuple)), key, f"must be a list, got {value!r}")
        if origin is tuple:
            _check(len(value) == len(args), key, f"must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def _build(cls, raw: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in raw:
        _check(k in names, f"{prefix}{k}", f"unknown key (known: {', '.join(sorted(names))})")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in raw.items()})


def _parse_override(item: str) -> tuple[list[str], object]:
    key, eq, text = item.partition("=")
    if not key.strip() or not eq:
        raise ConfigError(f"--set {item}: expected key=value, e.g. --set train.lr=3e-4")
    try:
        return key.strip().split("."), _yaml(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item}: not a valid YAML value ({str(e).splitlines()[0]})") from None


def config_from_dict(raw: dict, overrides: list[str] = ()) -> Config:
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
    for item in overrides:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {part} is not a section")
        node[path[-1]] = value
    cfg = _build(Config, raw)
    cfg.validate()
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load and validate a YAML config; errors carry the file name."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder, not a config file")
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = _yaml(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text (UTF-8) file; a config is YAML") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        cfg = config_from_dict(raw, overrides)
        if cfg.name is None:  # the run is named after the file: it must make a folder name too
            cfg.name = path.stem if path is not None else "default"
            _check_folder_name(cfg.name, "name")
    except ConfigError as e:
        raise _blame(e, path, raw, overrides) from None
    return cfg


def _blame(e: ConfigError, path: Path | None, raw: dict, overrides: list[str]) -> ConfigError:
    """Name what caused `e`: the `--set` that set the key (or a section above or below it), all the
    overrides when the file alone is valid, else the file."""
    msg = str(e)
    if msg.startswith("--set "):
        return e
    key = getattr(e, "key", "") or ""
    for item in reversed(overrides):
        k = item.partition("=")[0].strip()
        if k and (key == k or key.startswith((k + ".", k + "[")) or k.startswith(key + ".")):
            return ConfigError(f"--set {item}: {msg.split(': ', 1)[1] if key == k else msg}")
    if overrides:
        try:
            config_from_dict(raw)
        except ConfigError:
            pass
        else:  # the file alone is fine: the overrides together made it invalid
            return ConfigError(f"--set {' '.join(overrides)}: {msg}")
    if path is None:
        return e
    if key == "name" and "name" not in raw:
        return ConfigError(f"{path}: {msg}; the run is named after the file unless the config sets name:")
    return ConfigError(f"{path}: {msg}")
