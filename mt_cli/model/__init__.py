"""The Transformer model."""

from mt_cli.model.transformer import Transformer, build_model

__all__ = ["Transformer", "build_model"]
