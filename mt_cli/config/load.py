"""Loading a config: YAML (safe, bounded, exponent floats, no duplicate keys) + `--set` overrides → a
validated Config."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Literal

import yaml

from mt_cli.config.schema import MAX_INT, Config, ConfigError, _check, _check_folder_name
from mt_cli.safe_parse import MAX_YAML_BYTES, BoundedYamlLoader, ParseError, check_bounded, read_text, short, short_key

ECHO_PATH = 200  # characters of a file name or `--set` item that an error message repeats


class _Loader(BoundedYamlLoader):
    """Safe, bounded YAML (aliases counted as copies, depth capped) that also reads 3e-4 and 1E-3 as numbers
    (YAML 1.1 makes them strings; `--set train.lr=3e-4`)."""


def _no_duplicate_keys(loader, node, deep=False):
    # merge keys (<<) may bring keys that the mapping then overrides: only the explicit ones must be unique
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
    seen: set = set()
    for key in keys:
        try:
            if key in seen:  # YAML would silently keep the last one
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {short(key)}", node.start_mark)
            seen.add(key)
        except TypeError:  # an unhashable key: construct_mapping refuses it
            pass
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_Loader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, lambda loader, node: _no_duplicate_keys(loader, node, deep=True)
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def _yaml(text: str, where: str, invalid: str = "not valid YAML"):
    """Parsed YAML; ConfigError `where: why` for any failure: bad syntax, too many values or too deep,
    a value Python refuses (a 5,000-digit integer, the date 2024-13-45)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        why = f"{invalid} ({short_key(str(e).splitlines()[0], 160)})"
    except ParseError as e:
        why = f"refused: {e}; a config is a few small sections"
    except (ValueError, OverflowError, RecursionError) as e:
        why = f"not a usable YAML value ({short_key(str(e).splitlines()[0] if str(e) else type(e).__name__, 160)})"
    raise ConfigError(f"{where}: {why}")


def _to_float(value) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond float range
        return math.inf


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
        _check(value in args, key, f"must be one of {', '.join(map(repr, args))}, got {short(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), key, f"must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key + ".")
    if origin in (list, tuple):
        _check(isinstance(value, (list, tuple)), key, f"must be a list, got {short(value)}")
        if origin is tuple:
            _check(len(value) == len(args), key, f"must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {short(value)}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {short(value)}")
        # no count, size or step number of a run comes near this; a 400-digit integer would reach torch
        _check(abs(value) <= MAX_INT, key, f"must be at most {MAX_INT:.0e} in size, got {short(value)}")
        return value
    if tp is float:
        _check(
            isinstance(value, (int, float)) and not isinstance(value, bool),
            key,
            f"must be a number, got {short(value)}",
        )
        number = _to_float(value)
        _check(math.isfinite(number), key, f"must be a finite number, got {short(value)}")  # .inf/.nan break training
        return number
    if tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {short(value)}")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def _build(cls, raw: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in raw:
        _check(k in names, f"{prefix}{short_key(k)}", f"unknown key (known: {', '.join(sorted(names))})")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in raw.items()})


def _set_label(item: str) -> str:
    return f"--set {short_key(item, ECHO_PATH)}"


def _parse_override(item: str) -> tuple[list[str], object]:
    key, eq, text = item.partition("=")
    if not key.strip() or not eq:
        raise ConfigError(f"{_set_label(item)}: expected key=value, e.g. --set train.lr=3e-4")
    if len(item) > MAX_YAML_BYTES:
        raise ConfigError(f"{_set_label(item)}: longer than {MAX_YAML_BYTES >> 10} KiB; put it in the config file")
    return key.strip().split("."), _yaml(text, _set_label(item), "not a valid YAML value") if text.strip() else None


def _copy(obj):
    """A deep copy of plain data (tuples become lists); each shared (aliased) part is copied again."""
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_copy(v) for v in obj]
    return obj


def config_from_dict(raw: dict, overrides: list[str] = ()) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping, got {type(raw).__name__}")
    try:  # raw may come from a checkpoint, not only from bounded YAML: copies must stay small and shallow
        check_bounded(raw)
    except ParseError as e:
        raise ConfigError(f"refused: {e}; a config is a few small sections") from None
    raw = _copy(raw)
    for item in overrides:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{_set_label(item)}: {short_key(part)} is not a section")
        node[path[-1]] = value
    try:  # every override is bounded, but together they could still be too much
        check_bounded(raw)
    except ParseError as e:
        raise ConfigError(f"--set: refused: {e}; a config is a few small sections") from None
    cfg = _build(Config, raw)
    cfg.validate()
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load and validate a YAML config; errors carry the file name."""
    path = Path(path) if path is not None else None
    raw = _read_config_file(path) if path is not None else {}
    try:
        cfg = config_from_dict(raw, overrides)
        if cfg.name is None:  # the run is named after the file: it must make a folder name too
            cfg.name = path.stem if path is not None else "default"
            _check_folder_name(cfg.name, "name")
    except ConfigError as e:
        raise _blame(e, path, raw, overrides) from None
    return cfg


def _read_config_file(path: Path) -> dict:
    """The file's YAML mapping, read no further than MAX_YAML_BYTES and parsed with bounded aliases and depth."""
    label = short_key(str(path), ECHO_PATH)
    try:
        if path.is_dir():
            raise ConfigError(f"{label}: is a folder, not a config file")
        if path.exists() and not path.is_file():  # /dev/zero, a FIFO: reading would never end
            raise ConfigError(f"{label}: not a regular file (a device or a pipe); a config is a YAML file")
        if not path.is_file():
            raise ConfigError(f"{label}: config file not found")
    except OSError as e:  # a name too long for the file system, a loop of links, …
        raise ConfigError(f"{label}: cannot be read as a config file ({e.strerror or e})") from None
    try:
        text = read_text(path, MAX_YAML_BYTES, "config file")
    except ParseError as e:
        raise ConfigError(str(e)) from None
    raw = _yaml(text, label) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: the top level must be a mapping")
    return raw


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
            return ConfigError(f"{_set_label(item)}: {msg.split(': ', 1)[1] if key == k else msg}")
    if overrides:
        try:
            config_from_dict(raw)
        except ConfigError:
            pass
        else:  # the file alone is fine: the overrides together made it invalid
            return ConfigError(f"{_set_label(' '.join(overrides))}: {msg}")
    if path is None:
        return e
    label = short_key(str(path), ECHO_PATH)
    if key == "name" and "name" not in raw:
        return ConfigError(f"{label}: {msg}; the run is named after the file unless the config sets name:")
    return ConfigError(f"{label}: {msg}")
