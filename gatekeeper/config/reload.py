"""conf.d -> compiled configuration, and again on every change: read, compile off the request path, swap.

The swap is one reference assignment (``self.config = new``); requests read ``loader.config`` once and keep
what they read. Unchanged bytes cause no swap, and files whose bytes did not change are not parsed again
(parsing YAML is most of a reload's cost). Each swap increments ``generation``, wakes
:meth:`ConfigLoader.wait_for_generation` and is logged with what changed; ``last_reload`` keeps the record.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

from gatekeeper.config.compile import CompileOptions, compile_config
from gatekeeper.config.manifests import FileResult, Snapshot, read_capped, read_dir, read_file, scan
from gatekeeper.config.table import Config
from gatekeeper.errors import ConfigError

if TYPE_CHECKING:  # watch.py (watchdog) loads when watching starts
    from gatekeeper.config.watch import Watcher

log = logging.getLogger("gatekeeper.reload")


@dataclass(frozen=True)
class ReloadRecord:
    """What the last reload did, for logs and the admin endpoint."""

    generation: int                     # generation serving after this reload
    trigger: str                        # "start", "watch", "signal", ...
    at: float                           # wall-clock time it finished (time.time())
    duration_ms: float
    swapped: bool                       # False: nothing changed, or the directory could not be read
    changes: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    errors: Tuple[str, ...] = ()


def file_digests(snapshot: Optional[Snapshot]) -> Tuple[object, ...]:
    """What decides whether a reload swaps: each file's digest, and the folders the walk did not follow."""
    if snapshot is None:
        return ()
    return tuple((f.file, f.digest) for f in snapshot.files) + tuple(str(p) for p in snapshot.problems)


def read_changed(root: Path, previous: Optional[Snapshot]) -> Snapshot:
    """Like :func:`manifests.read_dir`, but a file whose bytes are unchanged reuses its previous result."""
    if previous is None:
        return read_dir(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    os.listdir(root)  # raises PermissionError for an unreadable directory, as read_dir does
    known: Dict[str, FileResult] = {f.file: f for f in previous.files}
    results = []
    paths, problems = scan(root)
    for path in paths:
        old = known.get(path.relative_to(root).as_posix())
        if old is not None and old.digest and old.digest == _digest_of(path):
            results.append(old)
        else:
            results.append(read_file(path, root))
    return Snapshot(str(root), tuple(results), problems)


def _digest_of(path: Path) -> str:
    try:
        return hashlib.sha256(read_capped(path)).hexdigest()
    except (OSError, ConfigError):
        return ""


class ConfigLoader:
    """Holds the current :class:`Config` of a conf.d directory and replaces it when the files change.

    >>> loader = ConfigLoader("conf.d")        # doctest: +SKIP
    >>> loader.load(); loader.watch()          # doctest: +SKIP
    >>> loader.wait_for_generation(2, timeout=5)   # doctest: +SKIP
    """

    def __init__(self, conf_d: "str | Path", *, options: Optional[CompileOptions] = None,
                 debounce: float = 0.1) -> None:
        self.conf_d = Path(conf_d)
        self.options = options or CompileOptions()
        self.debounce = debounce
        self.config: Optional[Config] = None
        self.last_error: Optional[str] = None
        self.last_reload: Optional[ReloadRecord] = None
        self.history: Deque[ReloadRecord] = deque(maxlen=50)   # newest last, for the dashboard
        # called as hook(loader, swapped) after every reload attempt (metrics count them)
        self.on_reload: List[Callable[["ConfigLoader", bool], None]] = []
        self._read: Optional[Snapshot] = None     # the files as last read, before last-good merging
        self._lock = threading.Lock()
        self._swapped = threading.Condition()
        self._watcher: Optional[Watcher] = None

    @property
    def generation(self) -> int:
        return self.config.generation if self.config else 0

    def load(self) -> Config:
        """First load; raises OSError when the directory cannot be read (serve exits with a message)."""
        with self._lock:
            started = time.perf_counter()
            snapshot = read_dir(self.conf_d)
            self._swap(snapshot, compile_config(snapshot, None, self.options), None, started, "start")
            assert self.config is not None
            return self.config

    def reload(self, trigger: str = "watch") -> bool:
        """Re-read conf.d; swap in a new configuration if any file changed. True when swapped."""
        swapped = self._reload(trigger)
        for hook in self.on_reload:
            try:
                hook(self, swapped)
            except Exception:  # a broken observer must not break reloading
                log.exception("reload hook %r failed", hook)
        return swapped

    def _reload(self, trigger: str) -> bool:
        with self._lock:
            started = time.perf_counter()
            try:
                snapshot = read_changed(self.conf_d, self._read)
            except OSError as exc:
                self.last_error = f"{self.conf_d}: cannot read the directory: {exc}; keeping the current configuration"
                log.error(self.last_error)
                self._record(trigger, started, swapped=False, errors=(self.last_error,))
                return False
            previous = self.config
            if previous is not None and file_digests(snapshot) == file_digests(self._read):
                self.last_error = None
                self._record(trigger, started, swapped=False)
                return False
            self._swap(snapshot, compile_config(snapshot, previous, self.options), previous, started, trigger)
            return True

    def _swap(self, snapshot: Snapshot, new: Config, previous: Optional[Config], started: float,
              trigger: str) -> None:
        self.config = new                  # the swap: requests from now on see the new configuration
        if previous is not None:
            close_retired_services(previous, new)
        self._read = snapshot
        self.last_error = None
        seconds = time.perf_counter() - started
        diff = changes(new, previous)
        self._record(trigger, started, swapped=True, changes=diff, errors=tuple(str(e) for e in new.errors))
        log_reload(new, diff, seconds, trigger)
        with self._swapped:
            self._swapped.notify_all()

    def _record(self, trigger: str, started: float, *, swapped: bool,
                changes: Optional[Dict[str, List[str]]] = None, errors: Tuple[str, ...] = ()) -> None:
        self.last_reload = ReloadRecord(
            self.generation, trigger, time.time(), (time.perf_counter() - started) * 1000, swapped,
            {k: tuple(v) for k, v in (changes or {}).items() if v}, errors)
        self.history.append(self.last_reload)

    def wait_for_generation(self, generation: int, timeout: float) -> bool:
        """Block until ``generation`` (or a later one) serves; False after ``timeout`` seconds.

        Tests and tools wait on this instead of sleeping: ``loader.wait_for_generation(g + 1, 5)``.
        """
        deadline = time.monotonic() + timeout
        with self._swapped:
            while self.generation < generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._swapped.wait(remaining)
        return True

    def watch(self) -> None:
        """Start watching conf.d (watchdog); changes are debounced then reloaded.

        Once the watcher runs, conf.d is read again: a change written after the first read and before the
        watcher existed (start-up, or a worker's fork) sent no event any watcher saw. The watcher first, the
        rescan second, so no change falls between them; with nothing changed the rescan costs a digest per
        file, swaps nothing and records nothing.
        """
        from gatekeeper.config.watch import Watcher

        if self._watcher is None:
            self._watcher = Watcher(self.conf_d, self.reload, debounce=self.debounce)
            self._watcher.start()
            if self.changed_since_read():
                self.reload("rescan")

    def changed_since_read(self) -> bool:
        """Whether conf.d differs from what the serving configuration was built from (a digest per file).

        The start-up rescan asks this first, so an unchanged conf.d leaves no entry in the reload history."""
        try:
            snapshot = read_changed(self.conf_d, self._read)
        except OSError:
            return True  # let reload() report it
        return file_digests(snapshot) != file_digests(self._read)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None


def close_retired_services(old: Config, new: Config) -> None:
    """Drop the idle upstream connections of services the new configuration no longer uses.

    Requests still in flight on them finish normally: their connections are closed when handed back.
    """
    kept = {id(b.app) for b in new.services.values()}
    for built in old.services.values():
        close = getattr(built.app, "close", None)
        if built.app is not None and id(built.app) not in kept and close is not None:
            close()


def changes(new: Config, old: Optional[Config]) -> Dict[str, List[str]]:
    """Names added, changed and removed per kind, for the reload log line."""
    out: Dict[str, List[str]] = {}
    for kind in ("routers", "middlewares", "services"):
        now = {n: b.definition for n, b in _objects(new, kind).items()}
        before = {n: b.definition for n, b in _objects(old, kind).items()} if old else {}
        out[f"{kind}_added"] = sorted(set(now) - set(before))
        out[f"{kind}_removed"] = sorted(set(before) - set(now))
        out[f"{kind}_changed"] = sorted(n for n in set(now) & set(before) if now[n] != before[n])
    return out


def _objects(config: Config, kind: str) -> Dict[str, Any]:
    if kind == "routers":
        return {r.name: r for r in config.routers}
    return dict(getattr(config, kind))


def log_reload(new: Config, diff: Dict[str, List[str]], seconds: float, trigger: str = "watch") -> None:
    summary = " ".join(f"{k}={','.join(v)}" for k, v in diff.items() if v)
    log.info("configuration generation %d loaded in %.1f ms (%s): %d routers, %d middlewares, %d services, "
             "%d errors%s", new.generation, seconds * 1000, trigger, len(new.routers), len(new.middlewares),
             len(new.services), len(new.errors), (" " + summary) if summary else "")
    for err in new.errors:
        log.warning("%s", err)
