"""What the dashboard shows, sampled: the ``/config`` document plus per-router traffic series (from the
metrics exposition), the reload history and each JWT middleware's key-set status, secrets masked.

The dashboard (``dashboard.py``) turns this state into cells; nothing here renders.

Usage::

    source = DashboardSource(loader)       # loader: gatekeeper.config.reload.ConfigLoader
    state = source()                       # starts the once-a-second sampler on first use
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from gatekeeper.ops.view import config_document, mask_secrets, secret_values

Exposition = Callable[[], Tuple[bytes, str]]   # the metrics text and its content type
SPARK_POINTS = 60              # samples kept per router: a minute at one sample a second
RELOADS_KEPT = 20


def metric_totals(exposition_text: str) -> Dict[str, Dict[str, Any]]:
    """Per router: requests, requests by status, latency sum/count, JWT outcomes, upstream errors."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: Dict[str, Dict[str, Any]] = {}

    def of(router: str) -> Dict[str, Any]:
        return totals.setdefault(router, {"requests": 0.0, "status": {}, "latency_sum": 0.0,
                                          "latency_count": 0.0, "jwt": {}, "upstream_errors": 0.0})
    for family in text_string_to_metric_families(exposition_text):
        for sample in family.samples:
            router = sample.labels.get("router")
            if router is None:
                continue
            name, value, entry = sample.name, sample.value, of(router)
            if name == "gatekeeper_requests_total":
                entry["requests"] += value
                status = sample.labels.get("status", "?")
                entry["status"][status] = entry["status"].get(status, 0) + value
            elif name == "gatekeeper_request_duration_seconds_sum":
                entry["latency_sum"] += value
            elif name == "gatekeeper_request_duration_seconds_count":
                entry["latency_count"] += value
            elif name == "gatekeeper_jwt_outcomes_total":
                outcome = sample.labels.get("outcome", "?")
                entry["jwt"][outcome] = entry["jwt"].get(outcome, 0) + value
            elif name == "gatekeeper_upstream_errors_total":
                entry["upstream_errors"] += value
    return totals


class Traffic:
    """Turns successive metric totals into per-router series: requests per second and mean latency (ms)."""

    def __init__(self, points: int = SPARK_POINTS) -> None:
        self.points = points
        self.last: Optional[Tuple[float, Dict[str, Dict[str, Any]]]] = None
        self.rate: Dict[str, Deque[float]] = {}
        self.latency_ms: Dict[str, Deque[float]] = {}

    def add(self, at: float, totals: Dict[str, Dict[str, Any]]) -> None:
        if self.last is not None and at > self.last[0]:
            seconds = at - self.last[0]
            for router, now in totals.items():
                before = self.last[1].get(router, {})
                done = now["requests"] - before.get("requests", 0.0)
                timed = now["latency_count"] - before.get("latency_count", 0.0)
                spent = now["latency_sum"] - before.get("latency_sum", 0.0)
                self.series(self.rate, router).append(max(done, 0.0) / seconds)
                self.series(self.latency_ms, router).append(spent / timed * 1000 if timed > 0 else 0.0)
        self.last = (at, totals)

    def series(self, table: Dict[str, Deque[float]], router: str) -> Deque[float]:
        return table.setdefault(router, deque(maxlen=self.points))

    def totals(self) -> Dict[str, Dict[str, Any]]:
        return self.last[1] if self.last else {}


def reload_entry(record: Any) -> Dict[str, Any]:
    """A ReloadRecord as plain data (reload.py keeps only the last one; the dashboard keeps a history)."""
    return {"generation": record.generation, "trigger": record.trigger, "at": record.at,
            "durationMs": round(record.duration_ms, 1), "swapped": record.swapped,
            "changes": {kind: list(names) for kind, names in record.changes.items()},
            "errors": len(record.errors)}


def key_set_status(wrapper: Any) -> Dict[str, Any]:
    """What a JWT middleware's key source says about its keys: kind, count, freshness, last fetch error.

    A source may offer ``status()`` (a remote key set: fetchedAt, lastError, keys); a ``jwksFile`` path
    shows the file's modification time; a secret or PEM key is static. Never the keys themselves.
    """
    source = getattr(getattr(wrapper, "__self__", None), "source", None)
    if source is None:
        return {}
    status = getattr(source, "status", None)
    if callable(status):
        found = status()
        return {k: found.get(k) for k in ("keys", "fetchedAt", "lastError") if k in found}
    path = getattr(source, "path", None)
    if isinstance(path, str):
        try:
            return {"fileModifiedAt": os.stat(path).st_mtime}
        except OSError as exc:
            return {"lastError": f"cannot read the key file: {exc.strerror}"}
    return {"static": True}


class DashboardSource:
    """``state()`` for :func:`make_dashboard`: the admin ``/config`` document plus traffic and reloads.

    Each sample reads the metrics exposition and the loader's last reload record; the first call starts a
    background sampler (:meth:`start`), so no thread runs until someone opens the dashboard.
    """

    def __init__(self, loader: Any, exposition: Optional[Exposition] = None, interval: float = 1.0) -> None:
        if exposition is None:
            from gatekeeper.ops.metrics import exposition as default_exposition  # prometheus_client, when used
            exposition = default_exposition
        self.loader = loader
        self.exposition: Exposition = exposition
        self.interval = interval
        self.traffic = Traffic()
        self.reloads: Deque[Dict[str, Any]] = deque(maxlen=RELOADS_KEPT)
        self._seen_record: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def sample(self) -> None:
        with self._lock:
            history = list(getattr(self.loader, "history", ()))
            seen_at = next((i for i, r in enumerate(history) if r is self._seen_record), -1)
            unseen = history[seen_at + 1:]
            for record in unseen:
                self.reloads.appendleft(reload_entry(record))
            if history:
                self._seen_record = history[-1]
            now = time.time()
            if self.traffic.last is None or now - self.traffic.last[0] >= self.interval * 0.9:
                self.traffic.add(now, metric_totals(self.exposition()[0].decode("utf-8", "replace")))

    def start(self) -> None:
        """Sample once a second in the background (a daemon thread; a greenlet under gevent)."""
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="dashboard-sampler", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()

    def __call__(self) -> Dict[str, Any]:
        self.start()   # from the first view on, the charts keep their history between visits
        self.sample()
        config = self.loader.config
        doc = config_document(self.loader)
        doc["problems"] = problems(config)
        doc["reloads"] = list(self.reloads)
        doc["traffic"] = {router: {**totals, "rate": list(self.traffic.rate.get(router, ())),
                                   "latencyMs": list(self.traffic.latency_ms.get(router, ()))}
                          for router, totals in self.traffic.totals().items()}
        doc["keySets"], secrets = {}, []
        for name, built in (config.middlewares.items() if config else ()):
            secrets += secret_values(built.definition.options)
            if built.definition.kind == "plugin.jwt":
                doc["keySets"][name] = key_set_status(built.wrapper)
        masked: Dict[str, Any] = mask_secrets(doc, sorted(set(secrets), key=len, reverse=True))
        return masked


def problems(config: Any) -> List[Dict[str, Any]]:
    """Errors of the served configuration, each with file, object, reason and whether it is stale."""
    if config is None:
        return []
    stale_files = {f.file for f in config.snapshot.files if f.error is not None and f.documents}
    return [{"file": (err.file or "") + (f":{err.line}" if err.line else ""), "object": err.obj or "",
             "reason": err.reason, "stale": err.file in stale_files or "last good" in err.reason}
            for err in config.errors]
