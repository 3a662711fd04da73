"""Several Multi30k directions as one corpus (data.pairs): the training text of every direction in one pair of
files, each source line led by its target-language tag where more than one target language occurs; the main
direction's validation and test splits keep their names, the others' get the direction as a suffix."""

from __future__ import annotations

from pathlib import Path

from mt_cli.data.sources import DataError
from mt_cli.data.stream import LineBlocks

BLOCK_LINES = 10_000  # lines read at a time: memory is bounded by a block, not by the corpus


def split_name(split: str, pair: str, main: str) -> str:
    """`test_2016_flickr` of the main direction; `test_2016_flickr.fr-en` of another."""
    return split if pair == main else f"{split}.{pair}"


def split_langs(data, split: str) -> tuple[str, str]:
    """(source, target) language of a prepared split: the direction its name ends in, else the main one."""
    pair = split.rpartition(".")[2]
    return tuple(pair.split("-")) if pair in data.pairs and "." in split else (data.src_lang, data.tgt_lang)


def tags(data) -> list[str]:
    """The tag tokens the vocabulary needs (none with a single target language)."""
    found = (data.target_tag(tgt) for _, tgt in data.directions)
    return sorted({t for t in found if t})


def merge_directions(data, per_pair: dict[str, dict[str, list[Path]]], tmp: Path) -> dict[str, list[Path]]:
    """Split name -> [source file, target file] in `tmp`: `train` holds every direction's training pairs (in
    data.pairs order), each evaluation split one direction's; sources carry the target's tag."""
    main = data.pairs[0]
    specs: dict[str, list[Path]] = {}
    for pair, splits in per_pair.items():
        tag = data.target_tag(pair.split("-")[1])
        for split, (src, tgt) in splits.items():
            name = "train" if split == "train" else split_name(split, pair, main)
            out = specs.setdefault(name, [tmp / f"{name}.src.txt", tmp / f"{name}.tgt.txt"])
            _append_lines(src, out[0], tag)
            _append_lines(tgt, out[1], None)
    return specs


def _append_lines(path: Path, out: Path, tag: str | None) -> None:
    """Copy the lines of `path` (gzipped or not) to the end of `out`, `tag` and a space before each non-empty one."""
    prefix = f"{tag} ".encode() if tag else b""
    blocks = LineBlocks(path)
    try:
        with open(out, "ab") as f:
            while True:
                block, n = blocks.take(BLOCK_LINES)  # whole lines, each ending in a newline
                if not n:
                    break
                if prefix:
                    lines = block[:-1].split(b"\n")
                    block = b"".join((prefix + line if line.strip() else line) + b"\n" for line in lines)
                f.write(block)
    finally:
        blocks.close()


def choose_direction(data, src_lang: str | None, tgt_lang: str | None) -> tuple[str, str]:
    """The direction --src-lang / --tgt-lang ask for among the model's (either may be left out: the main
    direction's language, or the only one that fits); a DataError lists what the model translates."""
    have = data.directions
    fits = [d for d in have if src_lang in (None, d[0]) and tgt_lang in (None, d[1])]
    main = next((d for d in fits if d == have[0]), None)
    if main or len(fits) == 1:
        return main or fits[0]
    asked = " ".join(f"{k} {v}" for k, v in (("--src-lang", src_lang), ("--tgt-lang", tgt_lang)) if v)
    offer = ", ".join(f"{s}→{t}" for s, t in have)
    how = "several fit; name both languages" if fits else "choose one of those"
    raise DataError(f"{asked}: this model translates {offer}; {how}")


class TaggedSource:
    """A source codec that puts the target-language tag before every sentence it encodes (an empty line,
    never encoded, stays empty); everything else is the codec's own."""

    def __init__(self, codec, tag: str):
        self.codec, self.tag = codec, tag

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.codec.encode([f"{self.tag} {t}" for t in texts])

    def __getattr__(self, name: str):
        return getattr(self.codec, name)


def for_direction(codecs: dict, data, direction: tuple[str, str]) -> dict:
    """`codecs` set up to translate `direction`: the source side tagged where the model needs a tag."""
    tag = data.target_tag(direction[1])
    return {**codecs, "src": TaggedSource(codecs["src"], tag)} if tag else codecs
