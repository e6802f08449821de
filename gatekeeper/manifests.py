"""conf.d files -> plain documents, each remembering its file and line.

The first stage of a reload: find the files (sorted, hidden and editor leftovers skipped, the Kubernetes
``..data`` link followed), read their bytes, and parse YAML/JSON into :class:`Document` objects whose mappings
know the line they start on. Nothing here knows what a router is.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

from .errors import ConfigError

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class Mapping(dict):
    """A YAML mapping that remembers the line it starts on (1-based) and the line of each key."""

    line: int = 0
    key_lines: Dict[Any, int]

    def line_of(self, key: Any) -> int:
        return getattr(self, "key_lines", {}).get(key, self.line)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader building :class:`Mapping` objects; YAML 1.1 ``on``/``yes`` stay strings (Traefik reads YAML 1.2)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Mapping:  # type: ignore[override]
        self.flatten_mapping(node)
        result = Mapping()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError as exc:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found an unhashable key",
                    key_node.start_mark) from exc
            if key in result:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            result[key] = self.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_mapping)
# YAML 1.2 booleans only: Traefik (Go yaml v3) reads `on`, `yes`, `no` as strings.
_LineLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    __import__("re").compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


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


@dataclass(frozen=True)
class Snapshot:
    """Every manifest file of conf.d at one moment, in sorted path order."""

    root: str
    files: Tuple[FileResult, ...] = field(default_factory=tuple)

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
    """All manifest files under root, sorted by relative path.

    Hidden folders are skipped except Kubernetes' ``..data`` (a ConfigMap volume's visible files are links
    through it, so they are read through their visible names and ``..data``'s own walk is not needed).
    Symlinks to files are followed; symlinked folders are followed once.
    """
    found: List[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if is_manifest_name(name):
                path = Path(dirpath) / name
                if path.is_file():
                    found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def parse_text(text: str, file: str) -> Tuple[Document, ...]:
    """Parse one file's text (YAML, which includes JSON) into documents; ConfigError with the line on failure."""
    docs = []
    try:
        loader = _LineLoader(text)
        try:
            index = 0
            while loader.check_node():
                node = loader.get_node()
                data = loader.construct_document(node)
                if data is not None:
                    docs.append(Document(file, index, node.start_mark.line + 1, data))
                index += 1
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"not valid YAML: {problem}", file=file, line=line) from exc
    return tuple(docs)


def read_file(path: Path, root: Path) -> FileResult:
    """Read and parse one manifest; any failure is captured in the result, never raised."""
    rel = path.relative_to(root).as_posix()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return FileResult(rel, "", error=ConfigError(f"cannot read: {exc.strerror}", file=rel))
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return FileResult(rel, digest, error=ConfigError(f"not UTF-8 text (byte {exc.start})", file=rel))
    try:
        return FileResult(rel, digest, documents=parse_text(text, rel))
    except ConfigError as err:
        return FileResult(rel, digest, error=err)


def read_dir(root: "str | Path") -> Snapshot:
    """Read every manifest under root; OSError if root itself cannot be listed."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    os.listdir(root)  # raises PermissionError for an unreadable directory
    return Snapshot(str(root), tuple(read_file(p, root) for p in manifest_paths(root)))
