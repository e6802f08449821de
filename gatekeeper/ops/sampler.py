"""What the dashboard and ``/readyz`` show over time, sampled from the start of the process: per-router traffic
series, the reload history with what each reload broke or fixed, and since when each object is stale.

The dashboard (``dashboard.py``) turns this state into cells; nothing here renders.

Usage::

    source = DashboardSource(loader, metrics.exposition, counts=metrics.COUNTS)   # loader: a ConfigLoader
    source.start()                         # the admin app starts it with the process
    state = source()                       # /config's document plus problems, reloads, traffic, stale
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

from gatekeeper.ops.totals import Totals, counted_totals, empty_totals, metric_totals, worker_file_totals
from gatekeeper.ops.view import config_document, health_of, mask_secrets, secret_values

Exposition = Callable[[], Tuple[bytes, str]]   # the metrics text and its content type
SPARK_POINTS = 60              # samples kept per router: a minute at one sample a second
RELOADS_KEPT = 20
SLOW_SAMPLE_FACTOR = 10        # the pause after a sample is at least 10 times what it took (≤ 10% of a core),
LONGEST_PAUSE = 10.0           # but never more than 10 s
KINDS = ("router", "middleware", "service", "file")
log = logging.getLogger("gatekeeper.dashboard")
EMPTY = empty_totals()         # a router not seen before: nothing counted yet


def status_class(totals: Mapping[str, Any], digit: str) -> float:
    return float(sum(n for code, n in totals.get("status", {}).items() if str(code).startswith(digit)))


class Series:
    """One router's last minute: request rate and mean latency per sample (the sparklines), and
    (seconds, requests, 4xx, 5xx) per sample (the last minute's rates)."""

    __slots__ = ("latency_ms", "rate", "window")

    def __init__(self, points: int) -> None:
        self.rate: Deque[float] = deque(maxlen=points)
        self.latency_ms: Deque[float] = deque(maxlen=points)
        self.window: Deque[Tuple[float, float, float, float]] = deque(maxlen=points)


class Traffic:
    """Turns successive metric totals into per-router :class:`Series`."""

    def __init__(self, points: int = SPARK_POINTS) -> None:
        self.points = points
        self.last: Optional[Tuple[float, Totals]] = None
        self.series: Dict[str, Series] = {}

    def add(self, at: float, totals: Totals) -> None:
        """One sample: a point per router. A router without new requests costs three appends of zeros, so a
        sample of 10,000 mostly idle routers takes a few milliseconds."""
        if self.last is not None and at > self.last[0]:
            seconds, last, idle = at - self.last[0], self.last[1], (at - self.last[0], 0.0, 0.0, 0.0)
            for router, now in totals.items():
                series = self.series.get(router) or self.series.setdefault(router, Series(self.points))
                before = last.get(router) or EMPTY
                done = float(now["requests"] - before["requests"])
                if done <= 0:  # idle (or a counter reset: never a negative rate)
                    series.rate.append(0.0)
                    series.latency_ms.append(0.0)
                    series.window.append(idle)
                    continue
                timed = now["latency_count"] - before["latency_count"]
                spent = now["latency_sum"] - before["latency_sum"]
                series.rate.append(done / seconds)
                series.latency_ms.append(spent / timed * 1000 if timed > 0 else 0.0)
                fours = max(status_class(now, "4") - status_class(before, "4"), 0.0)
                fives = max(status_class(now, "5") - status_class(before, "5"), 0.0)
                series.window.append((seconds, done, fours, fives))
        self.last = (at, totals)

    def totals(self) -> Totals:
        return self.last[1] if self.last else {}

    def sparks(self, router: str) -> Dict[str, List[float]]:
        series = self.series.get(router)
        return {"rateSeries": list(series.rate) if series else [],
                "latencyMs": list(series.latency_ms) if series else []}

    def recent(self, router: str) -> Dict[str, float]:
        """The last minute of ``router``: requests, 4xx and 5xx answers, and their rates per second.

        >>> traffic = Traffic()
        >>> traffic.add(0, {"r": {"requests": 0, "status": {}, "latency_sum": 0, "latency_count": 0}})
        >>> traffic.add(2, {"r": {"requests": 8, "status": {"200": 4, "404": 2, "502": 2},
        ...                       "latency_sum": 0.08, "latency_count": 8}})
        >>> traffic.recent("r")
        {'recent': 8.0, 'recent4xx': 2.0, 'recent5xx': 2.0, 'rate': 4.0, 'rate4xx': 1.0, 'rate5xx': 1.0}
        """
        series = self.series.get(router)
        samples = list(series.window) if series is not None else []   # a copy: the sampler thread appends
        seconds = sum(s[0] for s in samples) or 1.0
        done, fours, fives = (sum(s[i] for s in samples) for i in (1, 2, 3))
        return {"recent": done, "recent4xx": fours, "recent5xx": fives, "rate": round(done / seconds, 2),
                "rate4xx": round(fours / seconds, 2), "rate5xx": round(fives / seconds, 2)}


def reload_entry(record: Any, broke: List[Dict[str, str]], fixed: List[Dict[str, str]]) -> Dict[str, Any]:
    """A ReloadRecord as plain data, with what it broke (problems new or changed) and fixed (problems gone)."""
    return {"generation": record.generation, "trigger": record.trigger, "at": record.at,
            "durationMs": round(record.duration_ms, 1), "swapped": record.swapped,
            "changes": {kind: list(names) for kind, names in record.changes.items()},
            "errors": len(record.errors), "broke": broke, "fixed": fixed}


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


# --- the state of each object: ok, stale or error, from the configuration being served -----------------

def stale_now(config: Any) -> Dict[Tuple[str, str], str]:
    """(kind, name) -> error of every object serving its last good version: routers, middlewares and
    services whose new definition is in error, and files that no longer read or parse."""
    if config is None:
        return {}
    found: Dict[Tuple[str, str], str] = {}
    for kind, objects in (("router", {r.name: r for r in config.routers}), ("middleware", config.middlewares),
                          ("service", config.services)):
        for name, built in objects.items():
            if built.stale:
                found[(kind, name)] = built.error or "in error"
    for result in config.snapshot.files:
        if result.error is not None and result.documents:
            found[("file", result.file)] = result.error.reason
    return found


def problems(config: Any) -> List[Dict[str, Any]]:
    """Errors of the served configuration: file, object, reason and state (``stale`` when a last good
    version serves, else ``error``), in the words every other table uses."""
    if config is None:
        return []
    stale = {f'{kind} "{name}"' if kind != "file" else name for kind, name in stale_now(config)}
    return [{"file": (err.file or "") + (f":{err.line}" if err.line else ""), "object": err.obj or "",
             "reason": err.reason,
             "state": "stale" if (err.obj in stale if err.obj else err.file in stale) else "error"}
            for err in config.errors]


def problem_key(problem: Mapping[str, Any]) -> Tuple[str, str]:
    return problem["file"].split(":")[0], problem["object"] or problem["reason"]


def what_broke(before: List[Dict[str, Any]], after: List[Dict[str, Any]]) -> Tuple[List[Dict[str, str]],
                                                                                    List[Dict[str, str]]]:
    """Problems new or changed since ``before`` (what a reload broke) and problems gone (what it fixed).

    >>> old = [{"file": "a.yaml:3", "object": 'router "r"', "reason": "x", "state": "error"}]
    >>> new = [{"file": "b.yaml:1", "object": "", "reason": "not valid YAML", "state": "error"}]
    >>> broke, fixed = what_broke(old, new)
    >>> [p["file"] for p in broke], [p["object"] for p in fixed]
    (['b.yaml:1'], ['router "r"'])
    """
    was = {problem_key(p): (p["state"], p["reason"]) for p in before}
    now = {problem_key(p) for p in after}
    broke = [p for p in after if was.get(problem_key(p)) != (p["state"], p["reason"])]
    fixed = [p for p in before if problem_key(p) not in now]
    return broke, fixed


class StaleSince:
    """Since when each object is stale: the time of the reload that first found it so, kept while it stays
    stale (a new error text keeps the date)."""

    def __init__(self) -> None:
        self.since: Dict[Tuple[str, str], float] = {}

    def update(self, config: Any, at: float) -> None:
        now = stale_now(config)
        self.since = {key: self.since.get(key, at) for key in now}

    def listing(self, config: Any) -> List[Dict[str, Any]]:
        """``[{kind, name, error, since}]`` for ``/readyz``, ``/config`` and the dashboard."""
        now = stale_now(config)
        return [{"kind": kind, "name": name, "error": error, "since": self.since.get((kind, name))}
                for (kind, name), error in sorted(now.items(), key=lambda item: (KINDS.index(item[0][0]),
                                                                                item[0][1]))]


class DashboardSource:
    """``state()`` for :func:`make_dashboard`: the admin ``/config`` document plus traffic and reloads.

    :meth:`start` samples the metrics once a second from then on (the admin app starts it with the process,
    so the charts have a history before anyone opens the page); every reload is recorded as it happens (a
    hook on the loader) with what it broke and fixed.
    """

    def __init__(self, loader: Any, exposition: Exposition, interval: float = 1.0, counts: Any = None,
                 worker_files: str = "") -> None:
        self.loader = loader
        self.exposition = exposition
        self.counts = counts          # metrics.COUNTS in one process: read directly instead of the exposition
        self.worker_files = worker_files   # with workers: prometheus_client's multiprocess directory
        self.interval = interval
        self.traffic = Traffic()
        self.reloads: Deque[Dict[str, Any]] = deque(maxlen=RELOADS_KEPT)
        self.stale = StaleSince()
        self._problems: List[Dict[str, Any]] = []
        self._built: Optional[Tuple[Any, Any, Dict[str, Any], List[str], List[str]]] = None
        self._seen: Any = None
        self._lock = threading.Lock()     # reload records (the hub's); the sampler keeps to self.traffic
        self._stop = threading.Event()
        self._started = self._stopped = False
        self._record_reloads(self.loader, True)
        loader.on_reload.append(self._record_reloads)

    def _record_reloads(self, loader: Any, swapped: bool) -> None:
        """Each reload not yet seen: what it broke and fixed (against the problems before it)."""
        with self._lock:
            history = list(getattr(loader, "history", ()))
            seen_at = next((i for i, r in enumerate(history) if r is self._seen), -1)
            for record in history[seen_at + 1:]:
                now = problems(loader.config) if record.swapped else self._problems
                broke, fixed = what_broke(self._problems, now)
                if not record.swapped:  # conf.d could not be read: the configuration before it keeps serving
                    broke = [{"file": "", "object": "", "reason": error, "state": "error"} for error in record.errors]
                self.reloads.appendleft(reload_entry(record, broke, fixed))
                self._problems = now
                self.stale.update(loader.config, record.at)
            if history:
                self._seen = history[-1]

    def totals(self) -> Totals:
        if self.counts is not None:
            try:
                return counted_totals(self.counts)
            except (AttributeError, TypeError, ValueError):  # counters of another shape: read the text instead
                self.counts = None
        if self.worker_files:
            found = worker_file_totals(self.worker_files)
            if found is not None:
                return found
        return metric_totals(self.exposition()[0].decode("utf-8", "replace"))

    def sample(self) -> None:
        """One sample, when the last is at least ~``interval`` old (one sampler: the thread, or a caller)."""
        now = time.time()
        if self.traffic.last is None or now - self.traffic.last[0] >= self.interval * 0.9:
            self.traffic.add(now, self.totals())

    def start(self) -> "DashboardSource":
        """Sample once a second in the background, in a daemon thread (a greenlet under gevent).

        Not a native thread: the cyclic garbage collector runs in whichever thread allocates, so a native
        thread would run other objects' finalizers (a connection pool's, an inFlightReq slot's) away from
        the hub, where their gevent locks cannot be taken. Long reads yield to the hub instead (totals.py)."""
        if not self._started:
            self._started = True
            self.sample()
            threading.Thread(target=self._run, args=(self._stop.wait,),
                             name="dashboard-sampler", daemon=True).start()
        return self

    def _run(self, sleep: Callable[[float], Any]) -> None:
        """Sample every ``interval``, or less often when a sample is slow (with workers it reads every
        worker's files): the sampler takes at most ~10% of a core."""
        pause = self.interval
        while True:
            sleep(pause)
            if self._stopped:
                return
            started = time.perf_counter()
            try:
                self.sample()
            except Exception:  # the charts stop moving; serving does not
                log.exception("dashboard sampler: sample failed")
            pause = min(max(self.interval, (time.perf_counter() - started) * SLOW_SAMPLE_FACTOR), LONGEST_PAUSE)

    def stop(self) -> None:
        self._stopped = True
        self._stop.set()

    def document(self) -> Dict[str, Any]:
        """``/config``'s document with problems, stale objects and key sets, secrets masked: built once per
        configuration (10,000 routers cost ~0.3 s to turn into data and mask), then only the services' health
        and the key sets are read again."""
        config, error = self.loader.config, getattr(self.loader, "last_error", None)
        if self._built is None or self._built[0] is not config or self._built[1] != error:
            doc = config_document(self.loader)
            doc["problems"] = problems(config)
            secrets = sorted({value for built in (config.middlewares.values() if config else ())
                              for value in secret_values(built.definition.options)}, key=len, reverse=True)
            checked = [name for name, built in (config.services.items() if config else ()) if health_of(built)]
            self._built = (config, error, mask_secrets(doc, secrets), secrets, checked)
        _, _, cached, secrets, checked = self._built
        doc = dict(cached)
        if checked:
            doc["services"] = dict(doc["services"])
            for name in checked:
                doc["services"][name] = {**doc["services"][name], **health_of(config.services[name])}
        fresh = {"keySets": {name: key_set_status(built.wrapper) for name, built in (
                     config.middlewares.items() if config else ()) if built.definition.kind == "plugin.jwt"},
                 "stale": self.stale.listing(config)}
        doc.update(mask_secrets(fresh, secrets))
        return doc

    def __call__(self) -> Dict[str, Any]:
        if not self._started:  # not started (embedded, tests): sample on demand
            self.sample()
        doc = self.document()
        doc["reloads"] = list(self.reloads)
        doc["traffic"] = {router: {**totals, **self.traffic.recent(router),
                                   **self.traffic.sparks(router)}
                          for router, totals in self.traffic.totals().items()}
        return doc

def fresh_start_lines(config: Any) -> List[str]:
    """What a process started on these files answers for each router a problem touches, one line each:
    ``gatekeeper check`` prints them, since a running gateway may still serve a last good (stale) version
    of the same objects and answer 200 where a new replica answers 503."""
    lines = [f'router "{r.name}" ({r.definition.source}): a fresh process answers 503: {r.error}'
             for r in config.routers if r.error is not None]
    served = {f'router "{r.name}"' for r in config.routers}
    lines += [f"{err.obj} ({err.file}:{err.line}): a fresh process leaves it out (its requests go to another "
              f"router or get 404): {err.reason.splitlines()[0]}"
              for err in config.errors if err.obj and err.obj.startswith("router ") and err.obj not in served]
    return lines
