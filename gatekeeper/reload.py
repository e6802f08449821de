"""conf.d -> compiled configuration, and again on every change: read, compile off the request path, swap.

The swap is one reference assignment (``self.config = new``); requests read ``loader.config`` once and keep
what they read. Unchanged bytes cause no swap. Each swap increments ``generation`` and is logged with what
changed.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .compile import CompileOptions, Config, compile_config
from .manifests import read_dir

log = logging.getLogger("gatekeeper.reload")


def digests(config: Optional[Config]) -> Tuple[Tuple[str, str], ...]:
    if config is None:
        return ()
    return tuple((f.file, f.digest) for f in config.snapshot.files)


class ConfigLoader:
    """Holds the current :class:`Config` of a conf.d directory and replaces it when the files change."""

    def __init__(self, conf_d: "str | Path", *, options: Optional[CompileOptions] = None,
                 debounce: float = 0.1) -> None:
        self.conf_d = Path(conf_d)
        self.options = options or CompileOptions()
        self.debounce = debounce
        self.config: Optional[Config] = None
        self.last_error: Optional[str] = None
        self._lock = threading.Lock()
        self._watcher = None

    @property
    def generation(self) -> int:
        return self.config.generation if self.config else 0

    def load(self) -> Config:
        """First load; raises OSError when the directory cannot be read (serve exits with a message)."""
        snapshot = read_dir(self.conf_d)
        started = time.perf_counter()
        self.config = compile_config(snapshot, None, self.options)
        log_reload(self.config, None, time.perf_counter() - started)
        return self.config

    def reload(self) -> bool:
        """Re-read conf.d; swap in a new configuration if any file changed. True when swapped."""
        with self._lock:
            started = time.perf_counter()
            try:
                snapshot = read_dir(self.conf_d)
            except OSError as exc:
                self.last_error = f"{self.conf_d}: cannot read the directory: {exc}; keeping the current configuration"
                log.error(self.last_error)
                return False
            previous = self.config
            if previous is not None and tuple((f.file, f.digest) for f in snapshot.files) == digests(previous):
                return False
            new = compile_config(snapshot, previous, self.options)
            self.config = new
            self.last_error = None
            log_reload(new, previous, time.perf_counter() - started)
            return True

    def watch(self) -> None:
        """Start watching conf.d (watchdog); changes are debounced then reloaded."""
        from .watch import Watcher

        if self._watcher is None:
            self._watcher = Watcher(self.conf_d, self.reload, debounce=self.debounce)
            self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None


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


def _objects(config: Config, kind: str) -> dict:
    if kind == "routers":
        return {r.name: r for r in config.routers}
    return dict(getattr(config, kind))


def log_reload(new: Config, old: Optional[Config], seconds: float) -> None:
    diff = changes(new, old)
    summary = " ".join(f"{k}={','.join(v)}" for k, v in diff.items() if v)
    log.info("configuration generation %d loaded in %.1f ms: %d routers, %d middlewares, %d services, "
             "%d errors%s", new.generation, seconds * 1000, len(new.routers), len(new.middlewares),
             len(new.services), len(new.errors), (" " + summary) if summary else "")
    for err in new.errors:
        log.warning("%s", err)
