"""Log lines: one RFC 3339 UTC timestamp with milliseconds, one JSON schema for application and access lines,
and the file an access log goes to.

Every line, application or access, starts its time as ``2026-11-29T09:09:04.059Z``. As JSON, both kinds are
one object per line with ``time``, ``level``, ``logger`` and ``msg`` first, then their fields (an access line
is ``logger: "access"`` with Traefik's access-log field names, accesslog.py). A log call adds fields with
``extra={"fields": {...}}``.

Usage::

    configure_logging("json", "info")
    log.info("reloaded", extra={"fields": {"generation": 3}})
    # {"time":"2026-11-29T09:09:04.059Z","level":"info","logger":"gatekeeper.serve","msg":"reloaded","generation":3}
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["LineSink", "configure_logging", "drain_logged", "encode_json", "format_time", "json_record",
           "reload_on_signal"]

PACKAGE_LOGGER = "gatekeeper"  # the parent of every logger of the package ("gatekeeper.proxy", ...)
_second_cache: List[object] = [-1, ""]


def format_time(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds (the seconds part formatted once a second).

    >>> format_time(1764407344.0591)
    '2025-11-29T09:09:04.059Z'
    """
    second = int(epoch)
    if _second_cache[0] != second:
        _second_cache[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second_cache[1]}.{int(epoch * 1000) % 1000:03d}Z"


# built once: json.dumps with options builds an encoder per call
encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def json_record(when: float, level: str, logger: str, msg: str, fields: Optional[Dict[str, Any]] = None) -> str:
    """The one JSON line schema: ``time``, ``level``, ``logger``, ``msg``, then ``fields``.

    >>> json_record(0, "info", "access", "", {"DownstreamStatus": 200})
    '{"time":"1970-01-01T00:00:00.000Z","level":"info","logger":"access","msg":"","DownstreamStatus":200}'
    """
    line: Dict[str, Any] = {"time": format_time(when), "level": level, "logger": logger, "msg": msg}
    if fields:
        line.update(fields)
    return encode_json(line)



class TextFormatter(logging.Formatter):
    """``2026-11-29T09:09:04.059Z INFO gatekeeper.reload: message``; a line's fields are JSON's (the message
    says the same in words)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{format_time(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line, the schema of :func:`json_record`; a traceback is never included (it
    would be a multi-line string inside one line; ``--log-format text`` shows it at ``--log-level debug``)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "fields", None) or {})
        if record.exc_info and record.exc_info[0] is not None:
            fields["error"] = record.exc_info[0].__name__
        return json_record(record.created, record.levelname.lower(), record.name, record.getMessage(), fields)


def configure_logging(fmt: str, level: str) -> None:
    """Application log lines to stderr, as text or one JSON object per line: gatekeeper's own at ``level``,
    other libraries' at INFO or above even at ``debug``, since their debug lines quote what gatekeeper never
    logs (urllib3's give each request's URL, query included: a forwardAuth or jwksUrl API key)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    package = logging.getLogger(PACKAGE_LOGGER)
    package.setLevel(level.upper())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(package.level, logging.INFO))


class LineSink:
    """Where access-log lines go: stderr, or a file opened for append.

    A file is checked at most once a second, as lines are written: when the path no longer names the file
    held (logrotate moved it, or it was deleted), the path is opened again, so rotation needs no signal
    (and works under ``--workers``, each worker holding its own descriptor). ``O_APPEND`` keeps whole lines
    from several workers apart.
    """

    CHECK_EVERY = 1.0

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path
        self.fd = sys.stderr.fileno() if path is None else self.open()
        self.checked = time.monotonic()

    def open(self) -> int:
        assert self.path is not None
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def reopen_if_moved(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self.checked < self.CHECK_EVERY:
            return
        self.checked = now
        try:
            held = os.fstat(self.fd)
            current = os.stat(self.path)
            if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                return
        except OSError:
            pass
        try:
            fd = self.open()
        except OSError:
            return   # keep writing to the file held; checked again in a second
        os.close(self.fd)
        self.fd = fd

    def write(self, data: bytes) -> None:
        self.reopen_if_moved()
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:  # a closed stderr or a full disk must not fail requests
            pass

    def close(self) -> None:
        if self.path is not None:
            os.close(self.fd)


# --- lines for what a signal did: a reload (SIGHUP), a stop (SIGTERM/SIGINT) --------------------------------

log = logging.getLogger("gatekeeper.serve")


def reload_on_signal(loader: Any) -> bool:
    """SIGHUP: reload conf.d and say what came of it, also when nothing changed (the reload's own line is
    written only for a swap): ``reload on SIGHUP: swapped, generation 3, 1 errors (routers_changed=api@file)``."""
    swapped = bool(loader.reload("signal"))
    last = loader.last_reload
    config = loader.config
    # a directory that could not be read, else the problems of the configuration serving (swapped or not)
    errors = len(last.errors) if last is not None and last.errors else len(config.errors) if config else 0
    changed = {kind: list(names) for kind, names in (last.changes.items() if last is not None else ())}
    summary = " ".join(f"{kind}={','.join(names)}" for kind, names in changed.items())
    log.info("reload on SIGHUP: %s, generation %d, %d errors%s", "swapped" if swapped else "no file changed",
             loader.generation, errors, f" ({summary})" if summary else "",
             extra={"fields": {"event": "reload", "signal": "SIGHUP", "swapped": swapped,
                               "generation": loader.generation, "errors": errors, "changes": changed}})
    return swapped


def drain_logged(servers: Sequence[Any], grace: float, why: str) -> bool:
    """Stop: one line as the drain starts (open connections, grace), one when it ends, and a final ``stopped``."""
    from gatekeeper.server.base import drain

    open_now = sum(len(getattr(server, "connections", ())) for server in servers)
    log.info("stopping on %s: draining %d connections (grace %gs)", why, open_now, grace,
             extra={"fields": {"event": "stopping", "signal": why, "connections": open_now, "grace_s": grace}})
    finished = drain(servers, grace)
    left = sum(len(getattr(server, "connections", ())) for server in servers)
    log.info("stopped: %s", "every request finished" if finished else f"{left} connections cut after the grace",
             extra={"fields": {"event": "stopped", "drained": finished, "cut": 0 if finished else left}})
    return finished
