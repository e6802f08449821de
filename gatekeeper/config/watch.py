"""watchdog -> debounce -> reload callback, and a watcher that survives its own failures.

Every relevant file event under conf.d (recursive, the root included, so the Kubernetes ``..data`` symlink
swap is seen) pushes a deadline ``debounce`` seconds ahead; when the deadline passes with no new event,
``on_change()`` runs once (events that never pause still reload every ``max_delay``). An editor's burst of
events (atomic rename, truncate-then-write, vim's ``4913`` probe and swap files) thus ends in one reload of
the final content. A file caught half-written that fails to parse, or caught blank (between the truncate and
the write), keeps its last good version, and the next event reloads it again; one cut at a line boundary can
parse, which is why docs/operations.md asks for atomic writes (write aside, rename).

Under gevent (``patch_all(queue=False)``, as ``gatekeeper serve`` does) watchdog's threads and the debounce
thread are greenlets, and inotify reads wait in gevent's ``select.poll``: nothing blocks the server.
``on_change`` (a compile, CPU only) runs in the debounce greenlet; see docs/operations.md ("Live reload") for the
measurements behind that choice.

    >>> watcher = Watcher(Path("conf.d"), on_change=loader.reload, debounce=0.1)   # doctest: +SKIP
    >>> watcher.start()                                                            # doctest: +SKIP

The observer is inotify (Linux), falling back to polling when inotify cannot start (watch limit reached,
unsupported file system); ``GATEKEEPER_WATCH=polling`` forces polling (NFS, some container overlays).
"""
from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Set, Tuple

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

log = logging.getLogger("gatekeeper.watch")

# Opened / closed-without-writing are left out: reading conf.d on reload would otherwise trigger a reload.
RELEVANT_EVENTS = [FileCreatedEvent, FileModifiedEvent, FileDeletedEvent, FileMovedEvent, FileClosedEvent,
                   DirCreatedEvent, DirDeletedEvent, DirMovedEvent, DirModifiedEvent]
POLL_INTERVAL = 0.25      # seconds between two directory scans of the polling observer
HEALTH_INTERVAL = 1.0     # how often a dead observer is noticed and restarted
MAX_DELAY = 1.0           # events that never stop (a log file written in conf.d) still reload this often


def is_editor_leftover(path: str) -> bool:
    """vim's swap files and ``4913`` write probe, backup ``~`` files, emacs ``#autosave#`` / ``.#lock`` files."""
    name = os.path.basename(path)
    return (name == "4913" or name.endswith(("~", ".swp", ".swx", ".swpx"))
            or name.startswith((".#", "#")))


def is_relevant(event: FileSystemEvent) -> bool:
    """Whether an event may change what conf.d holds (editor leftovers alone never do)."""
    paths = [p for p in (event.src_path, getattr(event, "dest_path", "")) if p]
    return not all(is_editor_leftover(os.fsdecode(p)) for p in paths)


class _Handler(FileSystemEventHandler):
    """Runs in watchdog's dispatch thread: only notes the event; never raises into watchdog."""

    def __init__(self, watcher: "Watcher") -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            if is_relevant(event):
                log.debug("conf.d event: %s %s", event.event_type, event.src_path)
                self.watcher.poke()
        except Exception:  # pragma: no cover - a bug here must not stop the observer
            log.exception("conf.d watcher: cannot handle %r", event)


class Watcher:
    """Watches ``root`` recursively and calls ``on_change()`` once events have been quiet for ``debounce`` s.

    Events that never pause still reload ``max_delay`` seconds after the first of them. ``on_change`` errors
    are logged, never raised; a dead observer (conf.d deleted and re-created, inotify
    failure) is restarted within about a second and followed by a reload, since events may have been missed.
    """

    def __init__(self, root: Path, on_change: Callable[[], object], debounce: float = 0.1,
                 polling: Optional[bool] = None, max_delay: float = MAX_DELAY) -> None:
        self.root = Path(root)
        self.on_change = on_change
        self.debounce = debounce
        self.max_delay = max(max_delay, debounce)
        self.polling = os.environ.get("GATEKEEPER_WATCH", "") == "polling" if polling is None else polling
        self.kind = ""                      # "inotify" or "polling" once started
        self._cond = threading.Condition()
        self._dirty = False
        self._deadline = 0.0
        self._latest = 0.0                  # the deadline may not pass this: max_delay after the first event
        self._stopping = False
        self._observer: Optional[BaseObserver] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self._observer = self._start_observer()
        self._thread = threading.Thread(target=self._run, name="gatekeeper-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._stop_observer()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._thread = None

    def poke(self) -> None:
        """Note a change: the reload runs ``debounce`` seconds after the last poke (``max_delay`` at most)."""
        with self._cond:
            now = time.monotonic()
            if not self._dirty:
                self._latest = now + self.max_delay
            self._dirty = True
            self._deadline = min(now + self.debounce, self._latest)
            self._cond.notify_all()

    # -- observer ---------------------------------------------------------------------------------
    def _start_observer(self) -> Optional[BaseObserver]:
        """inotify when possible, else polling; None (retried later) when conf.d cannot be watched at all."""
        kinds = ("polling",) if self.polling else ("inotify", "polling")
        for kind in kinds:
            observer = Observer() if kind == "inotify" else polling_observer(self.root)
            try:
                observer.schedule(_Handler(self), str(self.root), recursive=True, event_filter=RELEVANT_EVENTS)
                observer.start()
            except Exception as exc:  # OSError (inotify limits, missing dir) and whatever watchdog raises
                log.warning("conf.d watcher: cannot start %s observer on %s: %s", kind, self.root, exc)
                _quietly_stop(observer)
                continue
            if self.kind != kind:
                log.info("conf.d watcher: %s observer on %s", kind, self.root)
            self.kind = kind
            return observer
        return None

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            _quietly_stop(observer)

    def _observer_alive(self) -> bool:
        observer = self._observer
        return (observer is not None and observer.is_alive()
                and all(emitter.is_alive() for emitter in observer.emitters))

    def _restart_if_dead(self) -> None:
        if self._observer_alive() or self._stopping:
            return
        log.error("conf.d watcher: the %s observer stopped; restarting it", self.kind or "file")
        self._stop_observer()
        self._observer = self._start_observer()
        if self._observer is not None:
            self.poke()  # events were missed while it was down

    # -- debounce loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                if not self._wait_for_quiet():
                    return
                self._call_on_change()
            except Exception:  # pragma: no cover - keep watching whatever happens
                log.exception("conf.d watcher: unexpected error")

    def _wait_for_quiet(self) -> bool:
        """Block until a change has been quiet for ``debounce`` seconds; False when stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return False
                now = time.monotonic()
                if self._dirty and now >= self._deadline:
                    self._dirty = False
                    return True
                wait = min(self._deadline - now, HEALTH_INTERVAL) if self._dirty else HEALTH_INTERVAL
                if not self._cond.wait(max(wait, 0.0)):
                    self._cond.release()  # never start or stop an observer while holding the condition
                    try:
                        self._restart_if_dead()
                    finally:
                        self._cond.acquire()

    def _call_on_change(self) -> None:
        try:
            self.on_change()
        except Exception:
            log.exception("conf.d reload failed; keeping the current configuration")


class LoopSafeStat:
    """``os.stat`` for watchdog's polling snapshots that walks each folder once per snapshot.

    The polling observer follows symlinked folders, so ``conf.d/sub/up -> ..`` made it walk
    ``sub/up/sub/up/...`` until the kernel's symlink limit, and two such links made that 2^40 paths. A
    folder already walked in this snapshot is given its ``lstat`` (a link, not a folder), so it is not
    walked again: one walk is bounded by the number of distinct folders, as manifests.scan() is.
    """

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.seen: Set[Tuple[int, int]] = set()   # (st_dev, st_ino) of folders walked

    def __call__(self, path: str) -> os.stat_result:
        info = os.stat(path)
        if path == self.root:           # a snapshot starts with the root: a new walk
            self.seen = set()
        if stat.S_ISDIR(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if key in self.seen:
                return os.lstat(path)
            self.seen.add(key)
        return info


def polling_observer(root: Path) -> BaseObserver:
    """watchdog's polling observer, walking symlinked folders once (see :class:`LoopSafeStat`)."""
    return PollingObserverVFS(LoopSafeStat(root), os.scandir, polling_interval=POLL_INTERVAL)  # type: ignore[arg-type]


def _quietly_stop(observer: BaseObserver) -> None:
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=2)
    except Exception:  # pragma: no cover - stopping a broken observer
        log.debug("conf.d watcher: error while stopping the observer", exc_info=True)
