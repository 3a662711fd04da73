"""Text ↔ token ids for one language side: spaCy words + Vocab, or a sentencepiece model."""
from __future__ import annotations

import functools
import re
from itertools import chain
import tempfile
import unicodedata
from pathlib import Path

from mt_cli.data.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocab

_TRAINED = {"de": "de_core_news_sm", "en": "en_core_web_sm", "fr": "fr_core_news_sm"}
_NO_SPACE_BEFORE = {".", ",", "!", "?", ";", ":", ")", "]", "}", "%", "n't", "...", "…", "”"}
_NO_SPACE_AFTER = {"(", "[", "{", "¿", "¡", "„"}
_CACHE_WORDS = 200_000  # word -> ids entries a sentencepiece codec keeps (about 40 MB at most)


def normalize(text: str, lowercase: bool) -> str:
    text = " ".join(text.split())
    return text.lower() if lowercase else text


@functools.lru_cache(maxsize=None)  # loaded once per process (and inherited by `mt prepare`'s forked workers)
def spacy_tokenizer(lang: str):
    """The rule-based spaCy tokenizer for `lang` (a trained pipeline's, if one is installed)."""
    import spacy  # imported lazily: training on a prepared corpus must not need spaCy

    try:
        return spacy.load(_TRAINED[lang], exclude=["parser", "ner", "tagger", "lemmatizer"]).tokenizer
    except (OSError, KeyError, ImportError):
        pass
    try:
        return spacy.blank(lang).tokenizer
    except ImportError:  # spaCy has no language module for this code
        from mt_cli.data.sources import DataError

        raise DataError(f"spaCy has no tokenizer for language {lang!r}; use an ISO code spaCy knows, "
                        "or data.tokenizer: sentencepiece") from None


def detokenize(tokens: list[str]) -> str:
    """Join word tokens into text: no space before closing punctuation or clitics, after openers."""
    out: list[str] = []
    quote_open = False
    low_quote_open = False
    glue_next = False
    for i, tok in enumerate(tokens):
        glue = glue_next or not out
        glue_next = False
        if tok in _NO_SPACE_BEFORE or (tok.startswith("'") and len(tok) <= 3 and tok[1:].isalpha()):
            glue = True
        elif tok == "-" and out and out[-1][-1:].isalnum() and i + 1 < len(tokens) and tokens[i + 1][:1].isalnum():
            glue, glue_next = True, True
        elif tok == "“":  # closes a German/Czech „…“, opens an English “…”
            glue, glue_next = glue or low_quote_open, not low_quote_open
            low_quote_open = False
        elif tok == '"':
            glue = glue or quote_open
            glue_next = not quote_open
            quote_open = not quote_open
        low_quote_open = low_quote_open or tok == "„"
        if tok in _NO_SPACE_AFTER or (tok.endswith("'") and len(tok) >= 2 and tok[:-1].isalpha()):  # l' qu' jusqu'
            glue_next = True
        out.append(tok if glue else " " + tok)
    return re.sub(r"\s+", " ", "".join(out)).strip()


class SideCodec:
    """Encodes and decodes one language side; serializable into a checkpoint as plain data."""

    def __init__(self, kind: str, lang: str, lowercase: bool, vocab: Vocab, sp_model: bytes | None = None):
        self.kind, self.lang, self.lowercase, self.vocab = kind, lang, lowercase, vocab
        self.sp_model = sp_model
        self._sp = None
        self._tok = None
        self._cache: dict[str, list[int]] = {}

    # --- construction -----------------------------------------------------
    @classmethod
    def train_sentencepiece(cls, texts: list[str], lang: str, lowercase: bool, model_type: str, vocab_size: int):
        with tempfile.TemporaryDirectory() as d:
            inp = Path(d) / "train.txt"
            inp.write_text("\n".join(normalize(t, lowercase) for t in texts if t.strip()) + "\n", encoding="utf-8")
            return cls.train_sentencepiece_files([inp], lang, lowercase, model_type, vocab_size)

    @classmethod
    def train_sentencepiece_files(cls, inputs: list[Path], lang: str, lowercase: bool, model_type: str,
                                  vocab_size: int, sample: int | None = None, threads: int = 1):
        """Train on normalized text files, one sentence a line; with `sample`, on a random sample of that many
        sentences (sentencepiece's reservoir sampling, seeded: the same files give the same model)."""
        import sentencepiece as spm

        sampling = dict(input_sentence_size=sample, shuffle_input_sentence=True) if sample else \
            dict(shuffle_input_sentence=False)
        spm.set_random_generator_seed(1234)
        with tempfile.TemporaryDirectory() as d:
            try:
                spm.SentencePieceTrainer.train(
                    input=",".join(str(p) for p in inputs), model_prefix=str(Path(d) / "sp"), model_type=model_type,
                    vocab_size=vocab_size, character_coverage=1.0, unk_id=UNK, pad_id=PAD, bos_id=BOS, eos_id=EOS,
                    unk_piece=SPECIALS[UNK], pad_piece=SPECIALS[PAD], bos_piece=SPECIALS[BOS],
                    eos_piece=SPECIALS[EOS], hard_vocab_limit=False, num_threads=threads, minloglevel=2, **sampling)
            except RuntimeError as e:  # e.g. fewer pieces than the corpus has distinct characters
                from mt_cli.data.sources import DataError

                msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                msg = re.sub(r"^INTERNAL: \S+ \[.*?\]\s*", "", msg)[:200]  # drop the C++ source location
                raise DataError(f"sentencepiece ({lang}, data.sp_vocab_size={vocab_size}): {msg}") from None
            proto = (Path(d) / "sp.model").read_bytes()
        codec = cls("sentencepiece", lang, lowercase, Vocab([]), proto)
        sp = codec.sp
        codec.vocab = Vocab([sp.id_to_piece(i) for i in range(sp.get_piece_size())])
        return codec

    @property
    def sp(self):
        if self._sp is None:
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_proto=self.sp_model)
        return self._sp

    # --- text <-> tokens --------------------------------------------------
    def tokenize(self, texts: list[str]) -> list[list[str]]:
        return self.tokenize_normalized([normalize(t, self.lowercase) for t in texts])

    def tokenize_normalized(self, texts: list[str]) -> list[list[str]]:
        if self.kind == "sentencepiece":
            return self.sp.encode(texts, out_type=str)
        return [[t.text for t in doc if not t.is_space] for doc in self.tokenizer.pipe(texts, batch_size=1000)]

    @property
    def tokenizer(self):
        """The spaCy tokenizer of a word-level codec."""
        if self._tok is None:
            self._tok = spacy_tokenizer(self.lang)
        return self._tok

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.encode_normalized([normalize(t, self.lowercase) for t in texts])

    def encode_normalized(self, texts: list[str]) -> list[list[int]]:
        """Ids of texts that normalize() has seen already (what `mt prepare` streams through)."""
        if self.kind == "sentencepiece":
            return [self._sp_ids(t) for t in texts]
        return [self.vocab.encode(toks) for toks in self.tokenize_normalized(texts)]

    def _sp_ids(self, text: str) -> list[int]:
        """sentencepiece ids of one normalized text, word by word from a cache: no piece spans a space, so a text's
        ids are its words' ids in a row (tests/test_data.py checks this against whole-text encoding). Texts that
        sentencepiece's NFKC normalization could change (or with control characters) are encoded whole."""
        if not (text.isascii() or unicodedata.is_normalized("NFKC", text)) or not text.isprintable():
            return self.sp.encode(text)
        if not text:
            return []
        cache = self._cache
        words = text.split(" ")
        try:
            parts = [cache[w] for w in words]
        except KeyError:
            if len(cache) > _CACHE_WORDS:  # a bounded cache: frequent words come back at once
                cache.clear()
            parts = [cache[w] if w in cache else cache.setdefault(w, self.sp.encode(w)) for w in words]
        return list(chain.from_iterable(parts))

    def decode(self, ids: list[int]) -> str:
        """Ids (no specials expected; they are dropped) back to text."""
        ids = [i for i in ids if i >= len(SPECIALS) or i == UNK]
        if self.kind == "sentencepiece":
            return self.sp.decode(ids)
        return detokenize(self.vocab.decode(ids))

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.vocab.itos[i] for i in ids]

    # --- plain-data state for checkpoints ----------------------------------
    def state(self) -> dict:
        d = {"kind": self.kind, "lang": self.lang, "lowercase": self.lowercase, "itos": list(self.vocab.itos)}
        if self.sp_model is not None:
            import torch  # here, not at the top: `mt prepare`'s workers never need torch

            d["sp_model"] = torch.frombuffer(bytearray(self.sp_model), dtype=torch.uint8)
        return d

    @classmethod
    def from_state(cls, d: dict) -> "SideCodec":
        sp = d.get("sp_model")
        sp_bytes = bytes(sp.numpy().tobytes()) if sp is not None else None
        return cls(d["kind"], d["lang"], d["lowercase"], Vocab(d["itos"], with_specials=False), sp_bytes)
