"""Hostile and careless configs, `--set` values and report files: one line on stderr, exit 2, nothing left on
disk, bounded memory, whatever the aliases, depth, size or numbers (issue 12, classes 1 and 5)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_main
from hypothesis import HealthCheck, given, settings, strategies

from mt_cli.config import Config, ConfigError, config_from_dict, load_config
from mt_cli.safe_parse import ParseError, load_json, read_json_or_none

MAX_LINE = 1000  # an error line names the file, the key and what is wrong; it never repeats a huge value
BAD_FLOATS = [".inf", "-.inf", ".nan", ".NaN", "-1", "1e400", "1" + "0" * 400]


def _sections() -> dict[str, type]:
    return {name: tp for name, tp in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(tp)}


def float_keys() -> list[str]:
    """Every float of the schema, found from the dataclasses (a tuple of floats gives key[i]): a new float
    key is covered without editing this file."""
    keys = []
    for section, cls in _sections().items():
        for name, tp in typing.get_type_hints(cls).items():
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if tp is float or (typing.get_origin(tp) is typing.Union and args == [float]):
                keys.append(f"{section}.{name}")
            elif typing.get_origin(tp) is tuple and args and all(a is float for a in args):
                keys += [f"{section}.{name}[{i}]" for i in range(len(args))]
    return keys


def yaml_setting(key: str, value_text: str) -> tuple[str, str]:
    """(config file text, `--set` item) that give `key` (maybe `section.name[i]`) the YAML value `value_text`."""
    section, name, index = re.fullmatch(r"(\w+)\.(\w+)(?:\[(\d)\])?", key).groups()
    if index is not None:  # the other items keep their defaults
        items = [repr(v) for v in getattr(getattr(Config(), section), name)]
        items[int(index)] = value_text
        value_text = f"[{', '.join(items)}]"
    return f"{section}:\n  {name}: {value_text}\n", f"{section}.{name}={value_text}"


def assert_one_line_error(code: int, err: str, *, names: str = "") -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[:2000]
    assert len(lines[0]) <= MAX_LINE, lines[0][:2000]
    assert names in lines[0]
    return lines[0]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_the_schema_has_float_keys_to_check():
    assert {"train.lr", "train.min_lr", "decode.max_len_a", "train.betas[1]"} <= set(float_keys())


@pytest.mark.parametrize("value", BAD_FLOATS)
@pytest.mark.parametrize("key", float_keys())
def test_a_float_key_refuses_non_finite_and_negative_values_naming_the_key(tmp_path, key, value):
    text, item = yaml_setting(key, value)
    p = tmp_path / "exp.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: {key}: ") and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    name = key.split("[")[0]  # the item names the key; a long item is shortened
    assert re.match(rf"--set '?{re.escape(name)}=", str(e.value)) and "\n" not in str(e.value)


def readme_ranges() -> dict[str, tuple[str, str, str, str]]:
    """{key: (open bracket, low, high, close bracket)} from the README's config table ("in [0, 1)")."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = re.findall(
        r"^\| `([a-z_.]+)` \|[^\n]*\bin ([\[(])([^,\n]+), ([^\])\n]+)([\])])[^|\n]*\|$", readme, flags=re.M
    )
    return {key: (lo_b, lo, hi, hi_b) for key, lo_b, lo, hi, hi_b in rows}


@pytest.mark.parametrize("key", float_keys())
def test_each_float_key_accepts_exactly_the_range_the_readme_states(key):
    ranges = readme_ranges()
    assert re.sub(r"\[\d\]$", "", key) in ranges, f"the README's config table states no range ('in [a, b)') for {key}"
    lo_b, lo, hi, hi_b = ranges[re.sub(r"\[\d\]$", "", key)]
    low = float(lo)
    high = math.inf if hi == "∞" else Config().train.lr if hi == "`train.lr`" else float(hi)
    base = [] if key == "train.min_lr" else ["train.min_lr=0"]  # so that a small lr is not below min_lr

    def accepted(value: float) -> bool:
        try:
            config_from_dict({}, base + [yaml_setting(key, repr(value))[1]])
        except ConfigError as e:
            assert key in str(e)
            return False
        return True

    step = 1e-6 * max(1.0, abs(low), 0 if math.isinf(high) else abs(high))
    assert accepted(low) == (lo_b == "[") and not accepted(low - step)
    assert accepted(low + step) and accepted(low + 1 if math.isinf(high) else (low + high) / 2)
    if math.isinf(high):
        assert accepted(1e300)
    else:
        assert accepted(high) == (hi_b == "]") and not accepted(high + step) and accepted(high - step)


def billion_laughs(levels: int = 9, fan_out: int = 10) -> str:
    """A few hundred bytes of YAML that expand to fan_out ** levels items."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    refs = lambda i: ", ".join([f"*a{i - 1}"] * fan_out)  # noqa: E731
    lines += [f"a{i}: &a{i} [{refs(i)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\ndata:\n  test: *a%d\n" % levels


def test_billion_laughs_is_refused_in_bounded_memory(tmp_path):
    # in a child with capped memory and CPU seconds: a loader without a budget fails there, and never hangs
    p = tmp_path / "lol.yaml"
    p.write_text(billion_laughs(), encoding="utf-8")
    script = (
        "import resource, sys, tracemalloc\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "resource.setrlimit(resource.RLIMIT_CPU, (60, 60))\n"
        "from mt_cli.cli import main\n"
        "sys.argv = ['mt', 'train', '-c', sys.argv[1]]\n"
        "tracemalloc.start()\n"
        "try:\n    main()\n"
        "finally:\n    print(tracemalloc.get_traced_memory()[1])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, str(p)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "refused" in assert_one_line_error(done.returncode, done.stderr, names=str(p))
    assert int(done.stdout.split()[-1]) < 32 << 20  # bytes allocated at the peak: a small budget, not gigabytes
    assert files_under(tmp_path) == {"lol.yaml"}


@pytest.mark.parametrize(
    "text",
    [
        "train:\n  betas: " + "[" * 100_000 + "]" * 100_000 + "\n",  # flow style
        "".join("  " * i + "- \n" for i in range(2_000)),  # block style
        "train:\n  betas: &a [*a]\n",  # an alias inside its own anchor: endless nesting
        "data:\n  test: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n",
    ],
)
def test_deep_or_endless_nesting_is_one_line(tmp_path, monkeypatch, capsys, text):
    (tmp_path / "deep.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "ok.yaml").write_text("train:\n  epochs: 1\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run_main(monkeypatch, capsys, "train", "-c", "deep.yaml")[::2], names="deep.yaml")
    item = "train.betas=" + text.split(": ", 1)[1] if text.startswith("train") else "data.test=" + "[" * 10_000
    assert_one_line_error(*run_main(monkeypatch, capsys, "train", "-c", "ok.yaml", "--set", item)[::2], names=item[:12])
    assert files_under(tmp_path) == {"deep.yaml", "ok.yaml"}


def test_huge_inputs_are_refused_without_echoing_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "huge.yaml").write_text("name: x\n" + "#" * (2 << 20) + "\n", encoding="utf-8")
    assert "larger than" in assert_one_line_error(
        *run_main(monkeypatch, capsys, "train", "-c", "huge.yaml")[::2], names="huge.yaml"
    )
    (tmp_path / "ok.yaml").write_text("train:\n  epochs: 1\n", encoding="utf-8")
    for item in (
        "name=" + "a" * 50_000_000,
        "name=/" + "a" * 500_000,
        "name=" + "a" * 300,
        "model.d_model=" + "7" * 600_000,
        "x" * 500_000 + "=1",
        "data.src_lang=" + "é\n" * 200_000,
    ):
        line = assert_one_line_error(*run_main(monkeypatch, capsys, "train", "-c", "ok.yaml", "--set", item)[::2])
        assert line.startswith(f"error: --set {item[:5]}") or line.startswith(f"error: --set '{item[:5]}")
    line = assert_one_line_error(*run_main(monkeypatch, capsys, "train", "-c", "/dev/zero")[::2], names="/dev/zero")
    assert "not a regular file" in line
    line = assert_one_line_error(*run_main(monkeypatch, capsys, "train", "-c", "c" * 100_000 + ".yaml")[::2])
    assert "ccc" in line
    assert files_under(tmp_path) == {"huge.yaml", "ok.yaml"}


def test_aliases_and_merge_keys_within_the_budget_still_work(tmp_path):
    p = tmp_path / "alias.yaml"
    p.write_text(
        "train:\n  lr: &lr 1.0e-3\n  min_lr: *lr\nmodel:\n  <<: {dropout: 0.2, d_model: 64}\n"
        "  n_heads: 2\ndata:\n  test: &t [a.tsv, b.tsv]\n",
        encoding="utf-8",
    )
    cfg = load_config(p)
    assert cfg.train.min_lr == cfg.train.lr == 1e-3 and cfg.model.dropout == 0.2 and cfg.data.test == ["a.tsv", "b.tsv"]


def test_report_files_are_bounded_and_a_bad_one_reads_as_missing(tmp_path, monkeypatch, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    run = tmp_path / "result" / "r1"
    run.mkdir(parents=True)
    (run / "config.json").write_text(deep, encoding="utf-8")
    (run / "summary.json").write_text('{"test": %s}' % deep, encoding="utf-8")
    good = {"epoch": 1, "val_bleu": 12.5, "val_loss": 3.0, "train_loss": 3.5, "lr": 1e-3}
    (run / "metrics.jsonl").write_text(json.dumps(good) + "\n" + '{"epoch": 2, "x": %s}\n' % deep, encoding="utf-8")
    for path in (run / "config.json", run / "summary.json"):
        with pytest.raises(ParseError, match=rf"^{re.escape(str(path))}: not a valid JSON file \(nested deeper"):
            load_json(path)
        assert read_json_or_none(path) is None
    code, out, err = run_main(monkeypatch, capsys, "runs", "--result", str(tmp_path / "result"), "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["runs"][0]["epochs"] == 1 and json.loads(out)["runs"][0]["best_val_bleu"] == 12.5
    (run / "metrics.jsonl").write_text('{"epoch": 1, "x": %s}\n' % deep, encoding="utf-8")
    assert_one_line_error(
        *run_main(monkeypatch, capsys, "plot", str(run), "-o", str(tmp_path / "c.png"))[::2],
        names="metrics.jsonl holds no finished epoch",
    )
    (run / "metrics.jsonl").write_text(json.dumps(good) + "\n" + " " * (17 << 20) + "\n", encoding="utf-8")
    assert_one_line_error(
        *run_main(monkeypatch, capsys, "plot", str(run), "-o", str(tmp_path / "c.png"))[::2],
        names="metrics.jsonl: larger than",
    )
    (tmp_path / "big.json").write_text("[" + "0," * (3 << 20) + "0]", encoding="utf-8")
    with pytest.raises(ParseError, match=r"big.json: larger than"):
        load_json(tmp_path / "big.json")
    assert not (tmp_path / "c.png").exists()


# --- property-based: random configs and `--set` values through the real CLI ---

ODD_NAMES = strategies.sampled_from(["", " ", "train ", "Train", "<<", "~", "null", "1", "a.b", "é", "\t", "x" * 300])
SCALARS = strategies.one_of(
    strategies.none(),
    strategies.booleans(),
    strategies.integers(min_value=-(2**80), max_value=2**80),
    strategies.floats(allow_nan=True, allow_infinity=True),
    strategies.sampled_from([0, 1, -1, 1e-300, 1e300, 0.5]),
    strategies.text(max_size=20),
    strategies.sampled_from(["de", "en", "files", "spacy", "pre", "val_bleu"]),
)
VALUES = strategies.recursive(
    SCALARS,
    lambda inner: (
        strategies.lists(inner, max_size=4) | strategies.dictionaries(strategies.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)


@strategies.composite
def configs(draw) -> dict:
    """A config dict of known sections and keys mixed with odd names, holding values of any type."""
    cfg: dict = {}
    for section, cls in _sections().items():
        if draw(strategies.booleans()):
            keys = strategies.sampled_from([f.name for f in dataclasses.fields(cls)]) | ODD_NAMES
            cfg[section] = draw(strategies.dictionaries(keys, VALUES, max_size=4))
    if draw(strategies.booleans()):
        cfg[draw(ODD_NAMES | strategies.just("name"))] = draw(VALUES)
    return cfg


@strategies.composite
def hostile_yaml(draw) -> str:
    """YAML text with alias fan-outs, deep nesting or both, under a real key."""
    levels, fan_out = draw(strategies.integers(0, 7)), draw(strategies.integers(1, 12))
    chain = ["&a0 [x, 1, .inf]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * fan_out)}]" for i in range(1, levels + 1)]
    depth = draw(strategies.integers(0, 200))
    key = draw(strategies.sampled_from(["data.test", "train.betas", "train.lr", "model", "name"]))
    section, _, name = key.partition(".")
    value = "[" * depth + f"[{', '.join(chain)}]" + "]" * depth
    return f"{section}:\n  {name}: {value}\n" if name else f"{section}: {value}\n"


def run_in_empty_folder(monkeypatch, capsys, config_text: str, *sets: str) -> None:
    """`mt train` of `config_text` in a fresh folder with no prepared corpus: whatever the config, exit 2
    with one line, and the folder holds only the config afterwards."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "exp.yaml").write_text(config_text, encoding="utf-8")
        (folder / "empty").mkdir()
        monkeypatch.chdir(folder)
        code, _, err = run_main(
            monkeypatch,
            capsys,
            "train",
            "-c",
            "exp.yaml",
            "--set",
            "data.root=empty",
            *[a for s in sets for a in ("--set", s)],
        )
        assert_one_line_error(code, err)
        assert files_under(folder) == {"exp.yaml", "empty"}


PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@PROPERTY
@given(cfg=configs())
def test_random_configs_fail_in_one_line(monkeypatch, capsys, cfg):
    run_in_empty_folder(monkeypatch, capsys, yaml.safe_dump(cfg, allow_unicode=True))


@PROPERTY
@given(text=hostile_yaml())
def test_aliases_and_nesting_fail_in_one_line(monkeypatch, capsys, text):
    run_in_empty_folder(monkeypatch, capsys, text)


SET_KEYS = strategies.sampled_from(
    [k for k in (f"{s}.{f.name}" for s, c in _sections().items() for f in dataclasses.fields(c)) if k != "data.root"]
    + ["name"]
)
SET_VALUES = strategies.one_of(
    strategies.text(max_size=40),
    strategies.sampled_from(BAD_FLOATS + ["[", "{a: 1", "&a [*a]"]),
    VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
)


@PROPERTY
@given(key=SET_KEYS | strategies.text(max_size=20), value=SET_VALUES)
def test_random_set_values_fail_in_one_line(monkeypatch, capsys, key, value):
    run_in_empty_folder(monkeypatch, capsys, "train:\n  epochs: 1\n", f"{key}={value}")


@pytest.mark.parametrize(
    "setting, key",
    [
        ("model.d_model=" + "9" * 400, "model.d_model"),
        ("train.epochs=" + "9" * 30, "train.epochs"),
        ("model.d_model=1048576", "model.d_model"),
        ("model.enc_layers=100000", "model.enc_layers"),
        ("model.d_ff=10000000", "model.d_ff"),
    ],
)
def test_integers_too_large_for_any_run_are_refused_naming_the_key(setting, key):
    """A huge integer used to pass validation and fail deep inside torch (exit 1)."""
    with pytest.raises(ConfigError, match=re.escape(key)):
        config_from_dict({}, [setting])
