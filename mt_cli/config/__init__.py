"""Typed experiment configuration: dataclasses loaded from YAML, validated, passed explicitly."""

from mt_cli.config.load import config_from_dict, load_config
from mt_cli.config.schema import Config, ConfigError, DataConfig, DecodeConfig, ModelConfig, TrainConfig

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "DecodeConfig",
    "ModelConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
]
