"""Data: raw sources, tokenization, vocabularies, prepared corpora and batching."""
