"""Config loading: every mistake is a ConfigError naming the key (and the file); overrides are typed."""

from __future__ import annotations

import pytest
from conftest import REPO

from mt_cli.config import Config, ConfigError, config_from_dict, load_config


def write(tmp_path, text: str, name: str = "exp.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def config_error(tmp_path, text: str):
    """The config file written from `text`, and the one-line error loading it raises."""
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    return p, str(e.value)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.name == path.stem  # every shipped config names its runs after its file
    cfg.validate()


def test_shipped_configs_exist():
    assert {"tiny.yaml", "transformer_base.yaml"} <= {p.name for p in (REPO / "configs").glob("*.yaml")}


def test_values_reach_the_dataclasses(tmp_path):
    p = write(
        tmp_path,
        "model:\n  d_model: 64\n  n_heads: 4\ntrain:\n  lr: 0.002\n  betas: [0.8, 0.9]\n"
        "  max_tokens: null\n  batch_sentences: 16\ndata:\n  max_size: null\n",
    )
    cfg = load_config(p)
    assert (cfg.model.d_model, cfg.model.n_heads) == (64, 4)
    assert cfg.train.lr == 0.002 and cfg.train.betas == (0.8, 0.9)  # list -> tuple
    assert cfg.train.max_tokens is None and cfg.train.batch_sentences == 16
    assert cfg.name == "exp"


def test_integer_where_a_float_is_expected_becomes_float(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1\n"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    "text,key",
    [
        ("foo: 1\n", "foo"),
        ("model:\n  d_modle: 64\n", "model.d_modle"),
        ("train:\n  learning_rate: 0.1\n", "train.learning_rate"),
        ("decode:\n  beam: 4\n", "decode.beam"),
    ],
)
def test_unknown_key(tmp_path, text, key):
    p, msg = config_error(tmp_path, text)
    assert str(p) in msg and f"{key}: unknown key" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "text,key",
    [
        ("model:\n  d_model: big\n", "model.d_model"),
        ("model:\n  d_model: 64.5\n", "model.d_model"),
        ("model:\n  d_model: true\n", "model.d_model"),  # a bool is not an int
        ("train:\n  lr: fast\n", "train.lr"),
        ("data:\n  lowercase: 1\n", "data.lowercase"),
        ("data:\n  tokenizer: moses\n", "data.tokenizer"),  # not one of the Literal choices
        ("train:\n  betas: [0.9]\n", "train.betas"),  # a 2-tuple
        ("train:\n  betas: [0.9, x]\n", "train.betas[1]"),
        ("data:\n  test: a_file\n", "data.test"),  # a list
        ("model: 5\n", "model"),  # a section
    ],
)
def test_wrong_type(tmp_path, text, key):
    p, msg = config_error(tmp_path, text)
    assert msg.startswith(f"{p}: {key}: ")


@pytest.mark.parametrize(
    "text,key",
    [
        ("model:\n  d_model: 4\n", "model.d_model"),
        ("model:\n  d_model: 64\n  n_heads: 5\n", "model.n_heads"),
        ("model:\n  dropout: 1.0\n", "model.dropout"),
        ("model:\n  enc_layers: 0\n", "model.enc_layers"),
        ("train:\n  lr: 0\n", "train.lr"),
        ("train:\n  label_smoothing: -0.1\n", "train.label_smoothing"),
        ("train:\n  max_tokens: null\n  batch_sentences: null\n", "train.max_tokens"),
        ("train:\n  bucket_width: 0\n", "train.bucket_width"),
        ("decode:\n  beam_size: 0\n", "decode.beam_size"),
        ("decode:\n  beam_size: 2\n  nbest: 3\n", "decode.nbest"),
        ("data:\n  src_lang: xx\n", "data.src_lang"),
        ("data:\n  tgt_lang: de\n", "data.tgt_lang"),
        ("data:\n  max_len: 4\n", "data.max_len"),
        ("data:\n  min_freq: 0\n", "data.min_freq"),
        ("model:\n  share_embeddings: true\n", "model.share_embeddings"),
        ("data:\n  joint_vocab: true\n", "data.joint_vocab"),
        ("model:\n  positional: learned\n  max_positions: 101\n", "model.max_positions"),  # max_len 100 + 2
        ("train:\n  val_beam_size: 65\n", "train.val_beam_size"),
        ("train:\n  seed: -1\n", "train.seed"),
        ("train:\n  seed: 4294967296\n", "train.seed"),
        ("train:\n  best_metric: val_bleu\n  val_bleu: false\n", "train.best_metric"),
    ],
)
def test_out_of_range(tmp_path, text, key):
    p, msg = config_error(tmp_path, text)
    assert msg.startswith(f"{p}: {key}: ")


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [1, 2\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_empty_file_is_the_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.to_dict() | {"name": None} == Config().to_dict()


def test_overrides_are_parsed_and_typed():
    cfg = config_from_dict(
        {},
        [
            "train.lr=0.0003",
            "model.d_model=128",
            "model.n_heads=4",
            "data.max_size=null",
            "train.betas=[0.8, 0.99]",
            "decode.beam_size=3",
            "data.lowercase=false",
            "name=exp1",
            "data.test=[a, b]",
        ],
    )
    assert cfg.train.lr == 0.0003 and cfg.model.d_model == 128 and cfg.model.n_heads == 4
    assert cfg.data.max_size is None and cfg.train.betas == (0.8, 0.99) and cfg.decode.beam_size == 3
    assert cfg.data.lowercase is False and cfg.name == "exp1" and cfg.data.test == ["a", "b"]


@pytest.mark.parametrize("text,value", [("3e-4", 3e-4), ("1E-3", 1e-3), ("2.5e-4", 2.5e-4), ("1", 1.0)])
def test_float_overrides_in_exponent_form(text, value):
    # the CLI's own help suggests `--set train.lr=3e-4`; YAML 1.1 alone would read that as a string
    assert config_from_dict({}, [f"train.lr={text}"]).train.lr == pytest.approx(value)


def test_float_in_exponent_form_in_a_file(tmp_path):
    assert load_config(write(tmp_path, "train:\n  lr: 3e-4\n  eps: 1e-9\n")).train.eps == pytest.approx(1e-9)


def test_overrides_replace_file_values(tmp_path):
    p = write(tmp_path, "model:\n  d_model: 64\n  n_heads: 4\n")
    cfg = load_config(p, ["model.d_model=32"])
    assert cfg.model.d_model == 32 and cfg.model.n_heads == 4


@pytest.mark.parametrize(
    "item,key",
    [
        ("train.lr=abc", "train.lr"),
        ("model.d_modle=3", "model.d_modle"),
        ("model.n_heads=3", "model.n_heads"),
        ("train.lr=", "train.lr"),
    ],
)
def test_bad_overrides_name_the_key(tmp_path, item, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        config_from_dict({}, [item])
    p = write(tmp_path, "name: x\n")
    with pytest.raises(ConfigError, match=rf"^--set {item}: "):  # the culprit is the override, not the file
        load_config(p, [item])


def test_errors_blame_the_override_that_caused_them(tmp_path):
    p = write(tmp_path, "train:\n  lr: 1.0e-3\n")
    for item, words in (
        ("trian.lr=1e-3", "--set trian.lr=1e-3: trian: unknown key"),
        ("train.bogus.x=1", "--set train.bogus.x=1: train.bogus: unknown key"),
        ("train.betas=[a, 0.98]", "--set train.betas=[a, 0.98]: train.betas[0]: must be a number"),
        ("model={d_model: -1}", "--set model={d_model: -1}: model.d_model: must be"),
        ("train.max_oom=0", "--set train.max_oom=0: must be >= 1"),
    ):
        with pytest.raises(ConfigError) as e:
            load_config(p, [item])
        assert str(e.value).startswith(words), str(e.value)
    # a check across keys: the file alone is valid, so the overrides are named
    p = write(tmp_path, "train:\n  best_metric: val_bleu\n")
    with pytest.raises(ConfigError, match=r"^--set train.val_bleu=false: train.best_metric: val_bleu needs"):
        load_config(p, ["train.val_bleu=false"])


def test_a_run_named_after_its_file_needs_a_plain_file_name(tmp_path):
    p = tmp_path / "my exp.yaml"
    p.write_text("train:\n  epochs: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"my exp.yaml: name: 'my exp' must be .*unless the config sets name:"):
        load_config(p)
    p.write_text("name: my_exp\ntrain:\n  epochs: 1\n", encoding="utf-8")
    assert load_config(p).name == "my_exp"


def test_yaml_merge_keys_still_work(tmp_path):
    p = write(tmp_path, "model:\n  <<: {dropout: 0.2, d_model: 64}\n  d_model: 32\n  n_heads: 2\n")
    cfg = load_config(p)
    assert (cfg.model.dropout, cfg.model.d_model) == (0.2, 32)  # merged, then overridden by the mapping


def test_a_key_given_twice_is_an_error(tmp_path):
    p = write(tmp_path, "train:\n  lr: 1.0e-3\nmodel:\n  d_model: 64\ntrain:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(duplicate key 'train'\)"):
        load_config(p)


def test_override_errors_are_one_line_and_run_names_stay_inside_their_folders(tmp_path):
    with pytest.raises(ConfigError, match=r"^--set train.lr=\[unclosed: not a valid YAML value"):
        config_from_dict({}, ["train.lr=[unclosed"])
    with pytest.raises(ConfigError, match="expected key=value"):
        config_from_dict({}, ["=5"])
    for bad in ("../etc", "a/b", ".hidden", ""):
        with pytest.raises(ConfigError, match="^name: .* must be a plain folder name"):
            config_from_dict({"name": bad})
    with pytest.raises(ConfigError, match="^data.name: "):
        config_from_dict({"data": {"name": "../x"}})
    assert config_from_dict({"name": "de-en_v2.1+ls=0.1"}).name == "de-en_v2.1+ls=0.1"
    (tmp_path / "bin.yaml").write_bytes(b"\xde\xad\xbe\xef")
    with pytest.raises(ConfigError, match=r"bin.yaml: not a text \(UTF-8\) file"):
        load_config(tmp_path / "bin.yaml")
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(tmp_path)


def test_malformed_override():
    with pytest.raises(ConfigError, match="expected key=value"):
        config_from_dict({}, ["train.lr"])
    with pytest.raises(ConfigError, match="is not a section"):
        config_from_dict({"name": "x"}, ["name.sub=1"])


def test_overrides_do_not_mutate_the_input():
    raw = {"train": {"lr": 0.1}}
    config_from_dict(raw, ["train.lr=0.2"])
    assert raw == {"train": {"lr": 0.1}}


def test_fingerprint_tracks_data_settings_but_not_root():
    a = config_from_dict({"data": {"root": "x"}})
    b = config_from_dict({"data": {"root": "y"}})
    c = config_from_dict({"data": {"min_freq": 3}})
    assert a.data.fingerprint() == b.data.fingerprint() != c.data.fingerprint()


def test_a_config_dict_from_elsewhere_is_bounded_too():
    # config_from_dict also reads checkpoints' configs: plain data, deeply nested or with shared parts
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    shared = ["x"] * 10
    for _ in range(6):  # 10**7 items once copied, a few dozen objects here
        shared = [shared] * 10
    for raw, why in (({"data": {"test": deep}}, "nested deeper than"), ({"data": {"test": shared}}, "more than")):
        with pytest.raises(ConfigError, match=rf"^refused: {why}"):
            config_from_dict(raw)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config_from_dict(["not", "a", "mapping"])
