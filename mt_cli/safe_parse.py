"""Bounded parsing of user files (YAML configs, JSON reports): size, nesting depth and node count are
capped before anything big is built, so a hostile file is refused in one line, fast and in little memory."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

MAX_YAML_BYTES = 1 << 20  # a config is a few KiB
MAX_JSON_BYTES = 4 << 20  # config.json, summary.json, manifest.json: tens of KiB
MAX_JSONL_BYTES = 16 << 20  # metrics.jsonl: one short line per epoch
MAX_NODES = 10_000  # a config has about 200 nodes; counted after alias expansion
MAX_DEPTH = 32  # a config is 4 levels deep, a report about 5
ECHO_LIMIT = 60  # characters of a user value that an error message repeats


class ParseError(ValueError):
    """A user file that is too big, too deep or not parseable: one line naming the file (exit 2 from the CLI)."""


def short(value, limit: int = ECHO_LIMIT) -> str:
    """repr(value), cut to about `limit` characters: error messages echo user values, which may be huge."""
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]  # repr of the head only: a 50 MB string is never copied whole
        return repr(value)[:limit] + "…"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def short_key(key, limit: int = ECHO_LIMIT) -> str:
    """A key as an error message names it: plain when it is short printable text, else short()."""
    if isinstance(key, str) and key.isprintable() and len(key) <= limit:
        return key
    return short(key, limit)


def read_bytes(path: str | Path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of `path`, refused when there are more than `max_bytes` (read no further than that:
    /dev/zero or a huge file costs nothing)."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ParseError(f"{short_key(str(path), 200)}: cannot read the {what} ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise ParseError(f"{short_key(str(path), 200)}: larger than {max_bytes >> 10} KiB; this is not a {what}")
    return data


def read_text(path: str | Path, max_bytes: int, what: str = "file") -> str:
    """read_bytes decoded as UTF-8; ParseError naming the file when it is not UTF-8."""
    data = read_bytes(path, max_bytes, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{short_key(str(path), 200)}: not a text (UTF-8) file; a {what} is text") from None


def check_bounded(obj, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
    """Raise ParseError when plain data (dicts, lists, scalars) has more than `max_nodes` items, counting
    each shared reference again (as a copy would), or nests deeper than `max_depth`. Iterative: any depth."""
    stack = [(obj, 1)]
    count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > max_nodes:
            raise ParseError(f"more than {max_nodes} values (aliases counted as copies)")
        if depth > max_depth:
            raise ParseError(f"nested deeper than {max_depth} levels")
        if isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in item)


def parse_json(text: str, max_depth: int = MAX_DEPTH):
    """json.loads with a depth limit (json itself recurses: [[[[…]]]] gives RecursionError); ValueError
    (json.JSONDecodeError or ParseError) when `text` is not such JSON."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise ParseError(f"nested deeper than {max_depth} levels") from None
    check_bounded(obj, max_nodes=len(text) + 1, max_depth=max_depth)  # size is bounded by the text already
    return obj


def load_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES, what: str = "JSON file"):
    """The content of a JSON file, bounded in size and depth; ParseError (one line naming the file)
    when it is missing, too big, too deep or not JSON."""
    text = read_text(path, max_bytes, what)
    try:
        return parse_json(text)
    except ValueError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ParseError(f"{short_key(str(path), 200)}: not a valid {what} ({short_key(first, 120)})") from None


def read_json_or_none(path: str | Path, max_bytes: int = MAX_JSON_BYTES):
    """load_json, or None when the file is missing or not acceptable (for files that are optional)."""
    try:
        return load_json(path, max_bytes)
    except ParseError:
        return None


class BoundedYamlLoader(yaml.SafeLoader):
    """SafeLoader that counts nodes while composing, each alias as a copy of its anchor's subtree, and caps
    the nesting depth: a "billion laughs" or [[[[…]]]] is refused before anything big or deep is built."""

    max_nodes = MAX_NODES
    max_depth = MAX_DEPTH

    def __init__(self, stream):
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0
        self._extent: dict[int, tuple[int, int]] = {}  # id(node) → (nodes, depth) of its finished subtree

    def _add(self, nodes: int, depth: int) -> None:
        self._nodes += nodes
        if self._nodes > self.max_nodes:
            raise ParseError(f"more than {self.max_nodes} values (aliases counted as copies)")
        if depth > self.max_depth:
            raise ParseError(f"nested deeper than {self.max_depth} levels")

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self._extent:  # an alias inside its own anchor: an endless structure
                raise ParseError("an alias refers to a collection that contains it (endless nesting)")
            nodes, depth = self._extent[id(node)]
            self._add(nodes, self._depth + depth)
            return node
        self._depth += 1
        self._add(1, self._depth)  # before composing the children: stops [[[[…]]]] before Python's recursion limit
        start = self._nodes
        node = super().compose_node(parent, index)
        height = max((self._extent[id(child)][1] for child in _children(node)), default=0) + 1
        self._extent[id(node)] = (self._nodes - start + 1, height)
        self._depth -= 1
        return node


def _children(node):
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return ()
