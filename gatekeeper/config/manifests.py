"""conf.d files -> plain documents, each remembering its file and line.

The first stage of a reload: find the files (sorted, hidden and editor leftovers skipped, the Kubernetes
``..data`` link followed), read their bytes, and parse YAML/JSON into :class:`Document` objects whose mappings
know the line they start on. Nothing here knows what a router is.
"""
from __future__ import annotations

import gc
import hashlib
import os
import platform
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import yaml

from gatekeeper.config.yaml_bounds import (
    MAX_ALIAS_NODES,
    MAX_DEPTH,
    check_depth,
    check_graph,
    expanded_size,
    refused,
)
from gatekeeper.config.yaml_errors import explain
from gatekeeper.errors import ConfigError

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# Bounds on one file, so a hostile or broken file cannot stall the reload greenlet or exhaust memory.
# Parsing costs ~4 us per byte with the pure-Python parser, ~0.6 us with libyaml's (1 MiB: 0.6-4 s of CPU),
# more than any real conf.d file needs (1,000 routers are ~100 KiB); split bigger configurations into several files.
MAX_FILE_BYTES = 1 << 20


_STR, _SEQ, _MAP = "tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"
_FLAT_KEYS = frozenset({_STR, "tag:yaml.org,2002:int", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null",
                        "tag:yaml.org,2002:float"})   # keys flatten_mapping leaves alone (not merge, not value)
_TAG, _KEY = attrgetter("tag"), itemgetter(0)


class Mapping(Dict[Any, Any]):
    """A YAML mapping that remembers the line it starts on (1-based) and the line of each key."""

    line: int = 0
    key_lines: Dict[Any, int]
    # False when read from a file whose text cannot spell ``{{`` (no ``{{``, no backslash escape): expand_env
    # then skips the walk. True (walk it) for a mapping built any other way.
    templated: bool = True

    def line_of(self, key: Any) -> int:
        """The line of ``key``, else the mapping's own line."""
        key_lines: Dict[Any, int] = getattr(self, "key_lines", {})
        return key_lines.get(key, self.line)


class _Bounded:
    """Composition and construction shared by both loaders: :class:`Mapping` objects with lines, and bounds.

    Composition is bounded: aliases may expand to at most :data:`MAX_ALIAS_NODES` nodes in all, an alias may
    not refer to the node it is inside (a recursive structure), and nesting stops at :data:`MAX_DEPTH`.
    Everything after composition (construction, the providers' walks) is then linear in the bound. Mixed in
    before PyYAML's Composer, ``compose_node`` wraps the Python composer; libyaml's C composer (which builds
    the same node graph, aliases as shared nodes) is checked afterwards by :func:`check_graph`.
    """

    anchors: Dict[Any, yaml.Node]

    def _start_bounds(self, stream: str) -> None:
        # A string value can hold "{{" only if the text does, or spells it with escapes ("\x7b", "\\" + newline)
        self._plain = "{{" not in stream and "\\" not in stream
        self._aliases = "*" in stream   # without one the document is a tree: only its depth needs a check
        self._open_anchors: Set[str] = set()       # anchors whose node is still being composed
        self._sizes: Dict[int, int] = {}       # id(node) -> its size with aliases expanded
        self._alias_nodes = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Optional[yaml.Node]:
        composer: Any = super()
        if self.check_event(yaml.AliasEvent):  # type: ignore[attr-defined]
            self._count_alias(self.peek_event())  # type: ignore[attr-defined]
            return composer.compose_node(parent, index)  # type: ignore[no-any-return]
        event = self.peek_event()  # type: ignore[attr-defined]
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise refused(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return composer.compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1
            self._open_anchors.discard(anchor)

    def _count_alias(self, event: yaml.AliasEvent) -> None:
        """Refuse an alias to an enclosing node, and aliases whose expansion passes the bound."""
        if event.anchor in self._open_anchors:
            raise refused(f"alias *{event.anchor} refers to a node that contains it (a recursive structure)",
                          event.start_mark)
        node = self.anchors.get(event.anchor)
        if node is None:
            return  # PyYAML reports the undefined alias
        self._alias_nodes += expanded_size(node, self._sizes)
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise refused(f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes (an alias bomb?); "
                          "refused: write the values out, or split the file", event.start_mark)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Mapping:
        constructor: Any = self
        constructor.flatten_mapping(node)
        return self._mapping(node, lambda child: constructor.construct_object(child, deep=True))

    def _tree_object(self, node: yaml.Node) -> Any:
        """``construct_object(node, deep=True)`` for a document without aliases (a tree): strings, lists and
        mappings without merge or value keys built directly (no memo, no generator), anything else by
        ``construct_object``; the same objects, about a third less time (see docs/performance.md)."""
        tag, kind = node.tag, type(node)
        if kind is yaml.ScalarNode and tag == _STR:
            return node.value
        if kind is yaml.SequenceNode and tag == _SEQ:
            return [self._tree_object(child) for child in node.value]
        if isinstance(node, yaml.MappingNode) and tag == _MAP \
                and _FLAT_KEYS.issuperset(map(_TAG, map(_KEY, node.value))):
            return self._mapping(node, self._tree_object)
        return self.construct_object(node, deep=True)  # type: ignore[attr-defined]

    def _mapping(self, node: yaml.MappingNode, construct: Callable[[yaml.Node], Any]) -> Mapping:
        result = Mapping()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        if self._plain:
            result.templated = False
        for key_node, value_node in node.value:
            key = construct(key_node)
            try:
                hash(key)
            except TypeError as exc:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found an unhashable key",
                    key_node.start_mark) from exc
            if key in result:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            result[key] = construct(value_node)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result


class _LineLoader(_Bounded, yaml.SafeLoader):
    """The pure-Python loader (PyYAML's reader, scanner and parser): the fallback when libyaml is missing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._start_bounds(stream)


try:  # libyaml's C parser, when PyYAML was built with it (not under PyPy: its C-API emulation cannot subclass it)
    if platform.python_implementation() == "PyPy":
        raise ImportError("PyPy: the pure-Python parser, which its JIT runs")
    from yaml._yaml import CParser
except ImportError:  # the pure-Python parser alone (tests/test_manifests.py runs this path too)
    LOADERS: Tuple[type, ...] = (_LineLoader,)
else:
    class _CLineLoader(_Bounded, CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """libyaml's C scanner, parser and composer; construction (lines, YAML 1.2 booleans) stays Python.

        A document's node graph is checked by :func:`check_graph` before anything walks it: with aliases as
        shared nodes, a billion-laughs file composes in linear time and is refused before construction would
        expand it. About 5x faster to read than the pure-Python loader, which was 80% of a cold load.
        """

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            self._start_bounds(stream)

        def get_node(self) -> Optional[yaml.Node]:
            node: Optional[yaml.Node] = CParser.get_node(self)
            if node is not None:
                (check_graph if self._aliases else check_depth)(node)
            return node

        def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
            """``Resolver.resolve`` (which libyaml's composer calls for every node) without its Python loop
            for the usual answers: a quoted scalar, or a plain one whose first character no implicit resolver
            starts with, is a string; a collection has its default tag. The pure-Python loader, which
            tests/test_manifests.py compares with, keeps PyYAML's."""
            if kind is yaml.ScalarNode:
                if not implicit[0] or (value and value[0] not in _RESOLVED_FIRST):
                    return _STR
            elif kind is yaml.MappingNode:
                return _MAP
            elif kind is yaml.SequenceNode:
                return _SEQ
            return yaml.resolver.Resolver.resolve(self, kind, value, implicit)  # type: ignore[no-any-return,no-untyped-call]

        def construct_document(self, node: yaml.Node) -> Any:
            if self._aliases:
                return yaml.constructor.SafeConstructor.construct_document(self, node)
            try:
                return self._tree_object(node)
            finally:
                self.constructed_objects: Dict[Any, Any] = {}
                self.recursive_objects: Dict[Any, Any] = {}

    LOADERS = (_CLineLoader, _LineLoader)
# YAML 1.2 booleans only: Traefik (Go yaml v3) reads `on`, `yes`, `no` as strings.
_RESOLVERS = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _loader in LOADERS:
    _loader.add_constructor("tag:yaml.org,2002:map", _Bounded.construct_mapping)  # type: ignore[attr-defined]
    _loader.yaml_implicit_resolvers = {first: list(pairs) for first, pairs in _RESOLVERS.items()}  # type: ignore[attr-defined]
    _loader.add_implicit_resolver(  # type: ignore[attr-defined]
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# First characters some implicit resolver starts with (no wildcard resolver, no path resolver: both loaders'
# resolvers are the ones above), for _CLineLoader.resolve.
_RESOLVED_FIRST = frozenset(first for first, pairs in LOADERS[0].yaml_implicit_resolvers.items() if pairs)  # type: ignore[attr-defined]
assert None not in _RESOLVED_FIRST and not LOADERS[0].yaml_path_resolvers  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Document:
    """One YAML document of one file."""

    file: str          # path relative to conf.d, as shown in messages
    index: int         # position of the document in its file (0-based)
    line: int          # line the document starts on
    data: Any


@dataclass(frozen=True)
class FileResult:
    """What one file gave: its documents, or the error that stopped it being read."""

    file: str
    digest: str
    documents: Tuple[Document, ...] = ()
    error: Optional[ConfigError] = None
    blank: bool = False    # nothing but whitespace: as a truncate-then-write looks between its two steps


@dataclass(frozen=True)
class Snapshot:
    """Every manifest file of conf.d at one moment, in sorted path order, and what the walk ran into."""

    root: str
    files: Tuple[FileResult, ...] = field(default_factory=tuple)
    problems: Tuple[ConfigError, ...] = ()    # folders not followed (symlink loops), reported by collect()

    @property
    def documents(self) -> Iterator[Document]:
        for result in self.files:
            yield from result.documents


def is_manifest_name(name: str) -> bool:
    """Whether a file name is one conf.d reads (not hidden, not an editor leftover)."""
    if name.startswith(".") or name.endswith("~") or name.startswith("#"):
        return False
    return name.endswith(MANIFEST_SUFFIXES)


def manifest_paths(root: Path) -> List[Path]:
    """All manifest files under root, sorted by relative path (see :func:`scan`)."""
    return scan(root)[0]


def scan(root: Path) -> Tuple[List[Path], Tuple[ConfigError, ...]]:
    """All manifest files under root, sorted by relative path, and the folders that were not followed.

    Hidden folders are skipped except Kubernetes' ``..data`` (a ConfigMap volume's visible files are links
    through it, so they are read through their visible names and ``..data``'s own walk is not needed).
    Symlinks to files are followed; a symlinked folder is followed unless it leads to a folder already
    walked (a loop such as ``sub/up -> ..``, or a second link to one folder): that link is reported, so the
    walk is bounded by the number of distinct folders.
    """
    found: List[Path] = []
    problems: List[ConfigError] = []
    seen: Dict[Tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        try:
            info = here.stat()
        except OSError:
            dirnames[:] = []
            continue
        rel = here.relative_to(root).as_posix()
        first = seen.setdefault((info.st_dev, info.st_ino), rel)
        if first != rel:
            problems.append(ConfigError(
                f"folder not followed: it leads to {first if first != '.' else 'conf.d itself'}, already read "
                "(a symlink loop or a second link to one folder); remove the link", file=rel))
            dirnames[:] = []
            continue
        # real folders before links to folders, so a link to a folder also present is the one reported
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")),
                             key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d))
        for name in filenames:
            if is_manifest_name(name):
                path = here / name
                if path.is_file():
                    found.append(path)
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    problems.sort(key=lambda e: e.file or "")
    return found, tuple(problems)


def read_capped(path: Path) -> bytes:
    """A file's bytes; ConfigError past :data:`MAX_FILE_BYTES` (reads at most one byte more)."""
    with open(path, "rb") as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"larger than {MAX_FILE_BYTES // 1024} KiB: refused (parsing it would stall the "
                          "gateway); split it into several files")
    return raw


def parse_text(text: str, file: str, loader_class: Optional[type] = None) -> Tuple[Document, ...]:
    """Parse one file's text (YAML, which includes JSON) into documents; ConfigError with the line on failure.

    ``loader_class`` is one of :data:`LOADERS` (default: the first, libyaml's when available).
    """
    docs = []
    try:
        loader = (loader_class or LOADERS[0])(text)
        try:
            index = 0
            while loader.check_node():
                node = loader.get_node()
                assert node is not None  # check_node() said there is one
                data = loader.construct_document(node)
                if data is not None:
                    docs.append(Document(file, index, node.start_mark.line + 1, data))
                index += 1
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        if "maximum nesting depth" in problem:  # libyaml's own limit (1,000 levels), past ours
            problem = f"nested more than {MAX_DEPTH} levels deep"
        if mark is None:
            raise ConfigError(f"not valid YAML: {problem}", file=file) from exc
        context = getattr(exc, "context_mark", None)
        explained = explain(text, problem, mark.line, mark.column, context.line if context is not None else None)
        raise ConfigError(f"not valid YAML: {explained}", file=file, line=mark.line + 1) from exc
    return tuple(docs)


def read_file(path: Path, root: Path) -> FileResult:
    """Read and parse one manifest; any failure is captured in the result, never raised."""
    rel = path.relative_to(root).as_posix()
    try:
        raw = read_capped(path)
    except OSError as exc:
        return FileResult(rel, "", error=ConfigError(f"cannot read: {exc.strerror}", file=rel))
    except ConfigError as err:
        return FileResult(rel, "", error=err.located(file=rel))
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return FileResult(rel, digest, error=ConfigError(f"not UTF-8 text (byte {exc.start})", file=rel))
    try:
        return FileResult(rel, digest, documents=parse_text(text, rel), blank=not text.strip())
    except ConfigError as err:
        return FileResult(rel, digest, error=err)


def read_dir(root: "str | Path") -> Snapshot:
    """Read every manifest under root; OSError if root itself cannot be listed."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    os.listdir(root)  # raises PermissionError for an unreadable directory
    with paused_gc():
        paths, problems = scan(root)
        files = tuple(read_file(p, root) for p in paths)
    return Snapshot(str(root), files, problems)


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic collector paused while a configuration is read or compiled: it would walk all that was built
    so far again and again (a quarter of a 10,000-router load). Few cycles are made; its next run finds them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
