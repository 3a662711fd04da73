"""The README is the front door: every config key documented, and CI runs its test command."""

from __future__ import annotations

import dataclasses
import re
import typing

from conftest import REPO

from mt_cli.config import Config


def _keys(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _keys(hints[f.name], prefix + f.name + ".")
        else:
            yield prefix + f.name


def test_every_config_key_has_a_line_in_the_reference():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", readme, flags=re.M))
    keys = set(_keys(Config))
    assert keys - documented == set(), "undocumented config keys"
    assert documented - keys == set(), "README documents keys that do not exist"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    cmd = re.search(r"pip install -e '\.\[test\]' && ([^\n`]*python -m pytest[^\n`]*)", readme).group(1).strip()
    steps = [step.strip() for step in cmd.split("&&")]  # the style checks and the tests, each run by CI
    assert len(steps) > 1 and all(step in ci for step in steps), (steps, ci)
