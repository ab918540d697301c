"""Reading one stack file into plain data plus the place of every value.

Why not ``yaml.safe_load``: it forgets where things were, and every error we
report must name a line. We let PyYAML *compose* a node tree (each node has
its start mark) and build plain dicts, lists and scalars from it ourselves,
recording a :class:`~pyswarm.compose.errors.Mark` for every key path.

Building the values ourselves also lets us follow YAML 1.2's core schema, as
Docker's Go parser does, rather than PyYAML's YAML 1.1: ``80:80`` stays the
string it looks like (YAML 1.1 reads it as the base-60 integer 4880) and
``yes``/``no``/``on``/``off`` stay strings. Anchors, aliases and ``<<`` merge
keys are followed; duplicate keys are an error, as in Docker.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import KeyPath, Mark, Problem, StackFileError, format_path

try:  # libyaml parses several times faster; marks are the same
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - pyyaml built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

MAX_FILE_BYTES = 2 * 1024 * 1024
"""A stack file is at most 2 MiB (the 500-service file of bench/compose_load.py
is 0.56 MiB). PyYAML holds every node of a file in memory before we see it,
about 3 µs and 300 bytes a value; the cap bounds that to ~1 M values."""

MAX_NODES = 300_000
"""Values built in all, aliases expanded. A realistic 2 MiB file (1,800
services like bench/compose_load.py's) has 155,000; a file of a million tiny
values is refused here before its values and marks cost hundreds of MB more."""

MAX_ALIAS_VALUES = 50_000
ALIAS_RATIO = 10
MAX_ALIAS_CHARS = 4 * 1024 * 1024
"""Work that aliases may add: values built again by expanding ``*alias`` (or
``<<``), at most 50,000 or ten times the values written so far, whichever
is more (within ``MAX_NODES`` in all), and 4 MiB of strings repeated. Guarding the work rather than the number
of aliases (Docker's YAML reader refuses "excessive aliasing" by a ratio of
the same kind) stops a 1 KB billion-laughs file in milliseconds; real files
reuse a few anchors a service (bench/compose_load.py's 500 services write
35,500 values and expand 7,500, with 24,500 characters)."""

MAX_DEPTH = 100
"""Nesting of mappings and lists (libyaml's own limit is 1000, past Python's stack)."""


class _Loader(_BaseLoader):
    """A loader whose implicit types are YAML 1.2's core schema (see module doc)."""

    yaml_implicit_resolvers: dict[Any, Any] = {}


for _tag, _regexp, _first in [
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
    ("tag:yaml.org,2002:merge", r"^(?:<<)$", ["<"]),
]:
    _Loader.add_implicit_resolver(_tag, re.compile(_regexp), _first)


@dataclass
class Document:
    """One parsed file: its data and where each key path came from.

    ``marks`` holds the mark of each value; ``key_marks`` the mark of each
    mapping key (an unknown key is best reported where the key is written).
    """

    file: str
    data: Any
    marks: dict[KeyPath, Mark] = field(default_factory=dict)
    key_marks: dict[KeyPath, Mark] = field(default_factory=dict)

    def mark(self, path: KeyPath, key: bool = False) -> Mark:
        """The mark of ``path``, or of its nearest recorded ancestor."""
        return locate(self.marks, self.key_marks, path, key, self.file)


def locate(
    marks: dict[KeyPath, Mark],
    key_marks: dict[KeyPath, Mark],
    path: KeyPath,
    key: bool,
    default_file: str,
) -> Mark:
    """Find the best mark for ``path``: exact, else the closest ancestor's."""
    if key and path in key_marks:
        return key_marks[path]
    p = path
    while True:
        if p in marks:
            return marks[p]
        if not p:
            return Mark(default_file)
        p = p[:-1]


def _mark(file: str, node: yaml.Node) -> Mark:
    return Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    """Turns a composed node tree into plain values, recording marks."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.doc = Document(file, None)
        self.problems: list[Problem] = []
        self.count = 0
        self.active: set[int] = set()  # node ids being built (alias cycles)
        self.built: set[int] = set()  # node ids built once (the nodes outlive the build)
        self.aliased = 0  # values built again through an alias
        self.aliased_chars = 0  # characters of the strings among them

    def problem(self, node: yaml.Node, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(_mark(self.file, node), format_path(path), message))

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.count += 1
        again = id(node) in self.built  # an alias (or a << merge) expands it again
        if again:
            self.aliased += 1
            if isinstance(node, yaml.ScalarNode):
                self.aliased_chars += len(node.value)
        else:
            self.built.add(id(node))
        if self.count > MAX_NODES and not self.aliased:
            raise StackFileError(Problem(_mark(self.file, node), format_path(path),
                                         f"more than {MAX_NODES:,} values in one stack file"))
        allowed = max(MAX_ALIAS_VALUES, ALIAS_RATIO * len(self.built))
        if self.count > MAX_NODES or self.aliased > allowed or self.aliased_chars > MAX_ALIAS_CHARS:
            raise StackFileError(Problem(
                _mark(self.file, node), format_path(path),
                f"excessive aliasing: expanding aliases built {self.aliased:,} values and "
                f"{self.aliased_chars:,} characters again (at most {allowed:,} values, ten times those "
                f"written, and {MAX_ALIAS_CHARS:,} characters; {MAX_NODES:,} values in all)"))
        if len(path) > MAX_DEPTH:
            raise StackFileError(Problem(_mark(self.file, node), format_path(path[:8]) + "...",
                                         f"nested more than {MAX_DEPTH} levels deep"))
        self.doc.marks[path] = _mark(self.file, node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            self.problem(node, path, "an alias refers to its own anchor")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
            assert isinstance(node, yaml.MappingNode)
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        merges = [v for k, v in node.value if k.tag == "tag:yaml.org,2002:merge"]
        # << merge keys: explicit keys win; with a list, earlier maps win. Build
        # the merged maps first (last first), so the winners' marks are recorded last.
        base: dict[str, Any] = {}
        for merge in merges:
            sources = merge.value if isinstance(merge, yaml.SequenceNode) else [merge]
            for src in reversed(sources):
                if not isinstance(src, yaml.MappingNode):
                    self.problem(src, path + ("<<",), "a merge key (<<) takes a mapping or a list of mappings")
                    continue
                base.update(self.build(src, path))
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(key_node, path, "a key must be a plain value, not a list or mapping")
                continue
            key = str(key_node.value)
            if key in out:
                first = self.doc.key_marks.get(path + (key,))
                where = f" (first on line {first.line})" if first else ""
                self.problem(key_node, path + (key,), f"duplicate key{where}")
                continue
            self.doc.key_marks[path + (key,)] = _mark(self.file, key_node)
            out[key] = self.build(value_node, path + (key,))
        self.doc.marks[path] = _mark(self.file, node)
        if not base:
            return out
        base.update(out)
        return base

    def scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        tag, value = node.tag, node.value
        if tag == "tag:yaml.org,2002:str" or node.style in ("'", '"', "|", ">"):
            return value
        if tag == "tag:yaml.org,2002:null":
            return None
        if tag == "tag:yaml.org,2002:bool":
            return value.lower() == "true"
        if tag == "tag:yaml.org,2002:int":
            return _int(value, node, path, self)
        if tag == "tag:yaml.org,2002:float":
            return _float(value, node, path, self)
        if tag == "!reset" or tag == "!override":
            return value  # compose merge tags: kept as text; see merge.py
        if tag.startswith("tag:yaml.org,2002:"):
            return value  # timestamps, binary...: keep the text
        self.problem(node, path, f"unsupported YAML tag {tag}")
        return value


def _int(value: str, node: yaml.Node, path: KeyPath, b: _Builder) -> Any:
    v = value.replace("_", "")
    try:
        if v.startswith("0o"):
            return int(v[2:], 8)
        if v.startswith("0x"):
            return int(v[2:], 16)
        digits = v.lstrip("+-")
        if len(digits) > 1 and digits.startswith("0") and digits.isdigit() and "8" not in digits \
                and "9" not in digits:
            # a leading 0 is octal, as Docker's YAML reader (Go yaml.v3) has it:
            # `mode: 0440` in every Docker example means 0o440, not 440
            return (-1 if v.startswith("-") else 1) * int(digits, 8)
        return int(v, 10)
    except ValueError:
        b.problem(node, path, f"not an integer: {value!r}")
        return value


def _float(value: str, node: yaml.Node, path: KeyPath, b: _Builder) -> Any:
    low = value.lower()
    if low.endswith(".inf"):
        return -math.inf if low.startswith("-") else math.inf
    if low == ".nan":
        return math.nan
    try:
        return float(value)
    except ValueError:
        b.problem(node, path, f"not a number: {value!r}")
        return value


def parse_text(text: str, file: str) -> Document:
    """Parse stack-file text; ``file`` is only used in marks and messages."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(file, mark.line + 1, mark.column + 1) if mark else Mark(file)
        what = " ".join(x for x in (exc.context, exc.problem) if x) or "invalid YAML"
        raise StackFileError(Problem(where, "", f"invalid YAML: {what}")) from None
    except yaml.YAMLError as exc:
        raise StackFileError(Problem(Mark(file), "", f"invalid YAML: {exc}")) from None
    builder = _Builder(file)
    if node is None:
        builder.doc.data = None
    else:
        builder.doc.data = builder.build(node, ())
    if builder.problems:
        raise StackFileError(builder.problems)
    return builder.doc


def read_limited(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, refusing one over ``limit``.

    Never reads more than ``limit + 1`` bytes, so a 1 GB file (or one that grows
    while read) costs nothing; a FIFO, a device (``/dev/zero``) or a directory
    is refused by what it is, without blocking on it. Raises ``ValueError``
    whose message completes "PATH: ..." for people.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"is {_file_kind(mode)}, not a regular file")
        data = read_at_most(fd, limit)
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"larger than the {limit:,} byte limit")
    return data


def read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes from ``fd`` (a file, a pipe, stdin): one byte
    more than allowed says "too large" without reading the rest."""
    chunks: list[bytes] = []
    got = 0
    while got <= limit:
        chunk = os.read(fd, min(1 << 20, limit + 1 - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_text(path: str | Path, limit: int, what: str) -> str:
    """``read_limited`` as UTF-8 text; a :class:`StackFileError` naming the file."""
    name = str(path)
    try:
        data = read_limited(path, limit)
    except ValueError as exc:
        message = str(exc)
        if message.startswith("larger than"):
            message = f"{message} for a {what} ({limit // (1024 * 1024)} MiB)"
        raise StackFileError(Problem(Mark(name), "", message)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StackFileError(Problem(Mark(name), "", f"not UTF-8 text ({exc.reason})")) from None


def read_file(path: str | Path) -> Document:
    """Read and parse one stack file, reporting a missing file clearly."""
    return parse_text(read_text(path, MAX_FILE_BYTES, "stack file"), str(path))
