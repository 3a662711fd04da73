"""Config validation helpers: the error type that names the key, range checks, and the bounds they use."""

from __future__ import annotations

import math
import re

from mt_cli.safe_parse import short


class ConfigError(ValueError):
    """A config problem, reported to users as one line naming the key (and file)."""


MAX_INT = 10**12  # any integer key: larger is a typo (or hostile), and would fail deep inside torch
MAX_BEAM = 64  # beam sizes above this are a typo, and would exhaust memory
MAX_NAME_BYTES = 200  # file systems allow 255 bytes per name; runs may add -2, -3, …
MAX_LR = 1e9  # a ceiling against typos only: absurd but finite rates are how the divergence handling is tested
MAX_LENGTH_PENALTY = 5.0  # GNMT alpha: 0-2 in practice; the penalty ((5+len)/6)^alpha overflows beyond
MAX_SUBWORD_SAMPLES = 64  # each is a copy of the training split on disk
MAX_LEN_A = 10.0  # outputs of 10x the source length are runaway decoding (they stop at model.max_positions)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        e = ConfigError(f"{key}: {msg}")
        e.key = key
        raise e


def _check_float(
    value: float,
    key: str,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    high_name: str = "",
) -> None:
    """A float key: finite and in its range (the README's config table states each range)."""
    above = value > low if low_open else value >= low
    below = high is None or (value < high if high_open else value <= high)
    upper = "inf)" if high is None else f"{high_name or f'{high:g}'}{')' if high_open else ']'}"
    _check(
        math.isfinite(value) and above and below,
        key,
        f"must be a finite number in {'(' if low_open else '['}{low:g}, {upper}, got {short(value)}",
    )


def _check_folder_name(name: str | None, key: str) -> None:
    """Run and corpus names become folder names: one plain path component, short enough for any file system."""
    _check(
        name is None or (bool(re.fullmatch(r"[\w.+=-]+", name)) and not name.startswith(".")),
        key,
        f"{short(name)} must be a plain folder name (letters, digits, . _ - + =; no / and not starting with .)",
    )
    _check(
        name is None or len(name.encode("utf-8")) <= MAX_NAME_BYTES,
        key,
        f"{short(name)} is too long for a folder name (at most {MAX_NAME_BYTES} bytes)",
    )
