"""Text ↔ token ids for one language side: spaCy words + Vocab, or a sentencepiece model."""

from __future__ import annotations

import functools
import re
import tempfile
import unicodedata
from array import array
from itertools import chain, repeat
from pathlib import Path

import numpy as np

from mt_cli.data.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocab

_TRAINED = {"de": "de_core_news_sm", "en": "en_core_web_sm", "fr": "fr_core_news_sm"}
_NO_SPACE_BEFORE = {".", ",", "!", "?", ";", ":", ")", "]", "}", "%", "n't", "...", "…", "”"}
_NO_SPACE_AFTER = {"(", "[", "{", "¿", "¡", "„"}
_CACHE_WORDS = 500_000  # words whose sentencepiece ids WordPieces keeps (about 40 MB at most)


def normalize(text: str, lowercase: bool) -> str:
    text = " ".join(text.split())
    return text.lower() if lowercase else text


def normalize_lines(lines: list[str], lowercase: bool) -> list[str]:
    """[normalize(t, lowercase) for t in lines] in C-level maps and one lower() of all the lines joined (a newline
    ends the context of any case rule, and no character lowercases to or from a space): no Python code per line."""
    if lowercase and lines:
        lines = "\n".join(lines).lower().split("\n")
    return list(map(" ".join, map(str.split, lines)))


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

        raise DataError(
            f"spaCy has no tokenizer for language {lang!r}; use an ISO code spaCy knows, "
            "or data.tokenizer: sentencepiece"
        ) from None


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


def flatten(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Lists of ids -> (all ids in a row as int32, the length of each list)."""
    lens = np.fromiter(map(len, ids), np.int64, len(ids))
    return np.fromiter(chain.from_iterable(ids), np.int32, int(lens.sum())), lens


def _all_word_safe(texts: list[str]) -> bool:
    """all(map(_word_safe, texts)) in three calls: a newline composes with nothing, so a joined text is NFKC
    exactly when each text is."""
    joined = "\n".join(texts)
    return (joined.isascii() or unicodedata.is_normalized("NFKC", joined)) and "".join(texts).isprintable()


def _word_safe(text: str) -> bool:
    """Whether sentencepiece encodes `text` word by word: no piece spans a space, but its NFKC normalization
    could change (or split) a word that is not NFKC already, and it drops control characters."""
    return (text.isascii() or unicodedata.is_normalized("NFKC", text)) and text.isprintable()


class _WordTable(dict):
    """word -> row of the flat table (CSR: `ids`, `start`); a word looked up for the first time is encoded then."""

    def __init__(self, sp):
        super().__init__()
        self.sp, self.ids, self.start = sp, array("i"), array("q", [0])

    def __missing__(self, word: str) -> int:
        self.ids.extend(self.sp.encode(word))
        self.start.append(len(self.ids))
        self[word] = row = len(self)
        return row


class WordPieces:
    """word -> sentencepiece ids of a normalized text's words, kept as one flat table (CSR), so that a chunk
    of texts is encoded with one dictionary lookup per word (a C-level map) and numpy for the rest."""

    def __init__(self, sp):
        self.sp = sp
        self.clear()

    def clear(self) -> None:  # bounded: frequent words come back at once
        self.table = _WordTable(self.sp)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(all ids in a row, the number of ids of each text) of normalized `texts`."""
        if not texts:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        if len(self.table) > _CACHE_WORDS:
            self.clear()
        table = self.table
        words = " ".join(texts).split(" ")  # an empty text is one empty word, whose ids are none
        w = np.fromiter(map(table.__getitem__, words), np.int64, len(words))
        start = np.frombuffer(table.start, np.int64)
        first, n_ids = start[w], start[w + 1] - start[w]
        ends = np.cumsum(n_ids)
        flat = (
            np.frombuffer(table.ids, np.int32)[np.repeat(first - ends + n_ids, n_ids) + np.arange(int(ends[-1]))]
            if ends[-1]
            else np.zeros(0, np.int32)
        )
        n_words = np.fromiter(map(str.count, texts, repeat(" ")), np.int64, len(texts)) + 1
        return flat, np.diff(ends[np.cumsum(n_words) - 1], prepend=0)  # ids up to each text's last word


class SideCodec:
    """Encodes and decodes one language side; serializable into a checkpoint as plain data."""

    def __init__(self, kind: str, lang: str, lowercase: bool, vocab: Vocab, sp_model: bytes | None = None):
        self.kind, self.lang, self.lowercase, self.vocab = kind, lang, lowercase, vocab
        self.sp_model = sp_model
        self._sp = None
        self._tok = None
        self._words: WordPieces | None = None

    def __getstate__(self) -> dict:  # for worker processes: the plain data, not the loaded tokenizers
        return {**self.__dict__, "_sp": None, "_tok": None, "_words": None}

    # --- construction -----------------------------------------------------
    @classmethod
    def train_sentencepiece(cls, texts: list[str], lang: str, lowercase: bool, model_type: str, vocab_size: int):
        with tempfile.TemporaryDirectory() as d:
            inp = Path(d) / "train.txt"
            inp.write_text("\n".join(normalize(t, lowercase) for t in texts if t.strip()) + "\n", encoding="utf-8")
            return cls.train_sentencepiece_files([inp], lang, lowercase, model_type, vocab_size)

    @classmethod
    def train_sentencepiece_files(
        cls,
        inputs: list[Path],
        lang: str,
        lowercase: bool,
        model_type: str,
        vocab_size: int,
        sample: int | None = None,
        threads: int = 1,
        symbols: tuple[str, ...] = (),
    ):
        """Train on normalized text files, one sentence a line; with `sample`, on a random sample of that many
        sentences (sentencepiece's reservoir sampling, seeded: the same files give the same model). `symbols`
        (language tags) are pieces of their own, never split."""
        import sentencepiece as spm

        sampling = (
            dict(input_sentence_size=sample, shuffle_input_sentence=True)
            if sample
            else dict(shuffle_input_sentence=False)
        )
        spm.set_random_generator_seed(1234)
        with tempfile.TemporaryDirectory() as d:
            try:
                spm.SentencePieceTrainer.train(
                    input=",".join(str(p) for p in inputs),
                    model_prefix=str(Path(d) / "sp"),
                    model_type=model_type,
                    vocab_size=vocab_size,
                    character_coverage=1.0,
                    unk_id=UNK,
                    pad_id=PAD,
                    bos_id=BOS,
                    eos_id=EOS,
                    unk_piece=SPECIALS[UNK],
                    pad_piece=SPECIALS[PAD],
                    bos_piece=SPECIALS[BOS],
                    eos_piece=SPECIALS[EOS],
                    hard_vocab_limit=False,
                    num_threads=threads,
                    minloglevel=2,
                    **({"user_defined_symbols": list(symbols)} if symbols else {}),
                    **sampling,
                )
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
        """Ids of texts that normalize() has seen already."""
        if self.kind == "sentencepiece":
            return self.sp.encode(texts)
        return [self.vocab.encode(toks) for toks in self.tokenize_normalized(texts)]

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids of all normalized `texts` in a row as int32, the number of ids of each text): what `mt prepare`
        stores, equal to encode_normalized's lists (tests/test_streaming_data.py checks it on real lines)."""
        if self.kind != "sentencepiece":
            return flatten(self.encode_normalized(texts))
        if self._words is None:
            self._words = WordPieces(self.sp)
        if _all_word_safe(texts):
            return self._words.encode(texts)
        safe = np.fromiter(map(_word_safe, texts), bool, len(texts))
        ids, lens = self._words.encode([t for t, ok in zip(texts, safe) if ok])
        rest, rest_lens = flatten([self.sp.encode(t) for t, ok in zip(texts, safe) if not ok])
        all_lens = np.empty(len(texts), np.int64)
        all_lens[safe], all_lens[~safe] = lens, rest_lens
        out = np.empty(int(all_lens.sum()), np.int32)
        mask = np.repeat(safe, all_lens)  # both parts are in text order: masked assignment keeps it
        out[mask], out[~mask] = ids, rest
        return out, all_lens

    def encode_sampled(self, texts: list[str], alpha: float, seed: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """encode_flat's (ids, lengths) of normalized `texts` with a segmentation sampled by sentencepiece
        (BPE-dropout for bpe, subword regularization for unigram), seeded; a sampled text longer than `max_len`
        ids keeps its usual segmentation (the pair filter passed that one)."""
        import sentencepiece as spm

        spm.set_random_generator_seed(seed % 2**32)
        # one thread: the draws then come in text order, so a seed repeats them
        ids = self.sp.encode(texts, enable_sampling=True, alpha=alpha, nbest_size=-1, num_threads=1)
        for i, row in enumerate(ids):
            if len(row) > max_len:
                ids[i] = self.sp.encode(texts[i])
        return flatten(ids)

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
