"""A read-only dashboard for the admin listener: ``/dashboard/`` (HTML) and ``/dashboard/state.json``.

One page, no build step and no external assets. The server renders every table, so the page reads the same
with JavaScript off; with JavaScript on, it polls ``state.json`` once a second and redraws the tables and
the per-router sparklines from it, so a manifest dropped into conf.d shows within a couple of seconds.

Safety is by construction rather than by filtering: :func:`build_view` turns the state into *cells* (short
texts chosen field by field; never a middleware's options), the server renders cells with ``html.escape``
and the browser with ``textContent``. Values of secret-bearing options found in the loaded configuration are
also masked in every text shown (an error message could quote one).

Usage::

    source = DashboardSource(loader)                 # loader: gatekeeper.reload.ConfigLoader
    source.start()                                   # samples traffic and reloads once a second
    dashboard = make_dashboard(source)               # WSGI app answering /dashboard/...
"""
from __future__ import annotations

import html
import json
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Tuple

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]
Cell = Dict[str, Any]          # {"text": str, "cls": str} or {"spark": [numbers], "unit": str}
SPARK_POINTS = 60              # samples kept per router: a minute at one sample a second
RELOADS_KEPT = 20
SECRET_OPTIONS = ("signingsecret", "publickey", "jwksfile", "clientconfig")
MASK = "***"


# --- the data source: configuration, traffic samples, reload history -----------------------------------

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
        import os
        try:
            return {"fileModifiedAt": os.stat(path).st_mtime}
        except OSError as exc:
            return {"lastError": f"cannot read the key file: {exc.strerror}"}
    return {"static": True}


def secret_values(options: Any) -> List[str]:
    """Every string under a secret-bearing option, to be masked wherever text is shown."""
    found: List[str] = []

    def strings(value: Any) -> None:
        if isinstance(value, str) and len(value) >= 4:
            found.append(value)
        elif isinstance(value, Mapping):
            for item in value.values():
                strings(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                strings(item)
    if isinstance(options, Mapping):
        for name, value in options.items():
            if str(name).lower() in SECRET_OPTIONS:
                strings(value)
    return found


def mask_secrets(value: Any, secrets: List[str]) -> Any:
    """``value`` (plain JSON-like data) with every secret option value in its texts replaced."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: mask_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, secrets) for v in value]
    return value


class DashboardSource:
    """``state()`` for :func:`make_dashboard`: the admin ``/config`` document plus traffic and reloads.

    Each sample reads the metrics exposition and the loader's last reload record; the first call starts a
    background sampler (:meth:`start`), so no thread runs until someone opens the dashboard.
    """

    def __init__(self, loader: Any, exposition: Optional[Callable[[], Tuple[bytes, str]]] = None,
                 interval: float = 1.0) -> None:
        if exposition is None:
            from gatekeeper.ops.metrics import exposition
        self.loader = loader
        self.exposition = exposition
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
        from gatekeeper.ops.admin import config_document

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
        return mask_secrets(doc, sorted(set(secrets), key=len, reverse=True))


def problems(config: Any) -> List[Dict[str, Any]]:
    """Errors of the served configuration, each with file, object, reason and whether it is stale."""
    if config is None:
        return []
    stale_files = {f.file for f in config.snapshot.files if f.error is not None and f.documents}
    return [{"file": (err.file or "") + (f":{err.line}" if err.line else ""), "object": err.obj or "",
             "reason": err.reason, "stale": err.file in stale_files or "last good" in err.reason}
            for err in config.errors]


# --- the view: state -> cells, chosen field by field ---------------------------------------------------

def text(value: Any, cls: str = "") -> Cell:
    return {"text": "" if value is None else str(value), "cls": cls}


def state_cell(state: str, error: Optional[str] = None) -> Cell:
    return {"text": state + (f": {error}" if error else ""), "cls": f"state-{state}"}


def when(seconds: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else ""


def short_name(name: str) -> str:
    return name[:-5] if name.endswith("@file") else name


def changes_text(changes: Mapping[str, List[str]]) -> str:
    parts = [f"{kind.replace('_', ' ')}: {', '.join(short_name(n) for n in names)}"
             for kind, names in sorted(changes.items()) if names]
    return "; ".join(parts) or "no change"


def jwt_outcomes_text(outcomes: Mapping[str, float]) -> str:
    """``accepted 12 · 401 expired 3 · 403 claims 1`` (403 is the claims refusal; the rest are 401)."""
    def status(outcome: str) -> str:
        return "" if outcome == "accepted" else ("403 " if outcome == "claims" else "401 ")
    ordered = sorted(outcomes.items(), key=lambda item: (item[0] != "accepted", status(item[0]), item[0]))
    return " · ".join(f"{status(k)}{k} {int(v)}" for k, v in ordered) or "no requests yet"


def key_set_text(kind: Any, status: Mapping[str, Any], now: float) -> str:
    parts = [f"key source: {', '.join(kind) if isinstance(kind, list) else kind}"]
    if status.get("keys") is not None:
        parts.append(f"{status['keys']} keys")
    if status.get("fetchedAt"):
        parts.append(f"fetched {int(now - status['fetchedAt'])} s ago")
    if status.get("fileModifiedAt"):
        parts.append(f"file modified {when(status['fileModifiedAt'])}")
    if status.get("static"):
        parts.append("static key")
    parts.append(f"last fetch error: {status['lastError']}" if status.get("lastError") else "no fetch error")
    return "; ".join(parts)


def router_rows(doc: Mapping[str, Any]) -> List[List[Cell]]:
    traffic = doc.get("traffic", {})
    rows = []
    for r in doc.get("routers", []):
        seen = traffic.get(r["name"], {})
        statuses = ", ".join(f"{code}: {int(n)}" for code, n in sorted(seen.get("status", {}).items()))
        rows.append([text(short_name(r["name"]), "name"), text(r["rule"], "code"), text(r["priority"]),
                     text(", ".join(r["entryPoints"]) or "all"),
                     text(", ".join(short_name(m) for m in r["middlewares"])), text(short_name(r["service"])),
                     state_cell(r["state"], r.get("error")),
                     text(f"{int(seen.get('requests', 0))}" + (f" ({statuses})" if statuses else "")),
                     {"spark": [round(x, 2) for x in seen.get("rate", [])], "unit": "req/s"},
                     {"spark": [round(x, 2) for x in seen.get("latencyMs", [])], "unit": "ms"}])
    return rows


def middleware_rows(doc: Mapping[str, Any], now: float) -> List[List[Cell]]:
    rows = []
    for name, m in doc.get("middlewares", {}).items():
        details = ""
        if m["kind"] == "plugin.jwt":
            outcomes: Dict[str, float] = {}
            for r in doc.get("routers", []):
                if name in r["middlewares"]:
                    for outcome, n in doc.get("traffic", {}).get(r["name"], {}).get("jwt", {}).items():
                        outcomes[outcome] = outcomes.get(outcome, 0) + n
            details = (key_set_text(m.get("options", {}).get("keySource"), doc.get("keySets", {}).get(name, {}),
                                    now) + " | " + jwt_outcomes_text(outcomes))
        rows.append([text(short_name(name), "name"), text(m["kind"]), state_cell(m["state"], m.get("error")),
                     text(details)])
    return rows


def service_rows(doc: Mapping[str, Any]) -> List[List[Cell]]:
    rows = []
    for name, s in doc.get("services", {}).items():
        members = [f"{srv['url']} (weight {srv['weight']})" for srv in s.get("servers", [])]
        members += [f"{short_name(c['service'])} (weight {c['weight']})" for c in s.get("children", [])]
        health = s.get("health") or ("serving" if s["state"] != "error" else "not serving")
        rows.append([text(short_name(name), "name"), text(s["kind"]), text("; ".join(members), "code"),
                     state_cell(s["state"], s.get("error")), text(health)])
    return rows


def problem_rows(doc: Mapping[str, Any]) -> List[List[Cell]]:
    rows = [[text(p["file"], "code"), text(p["object"]), text(p["reason"]),
             text("stale: serving the last good version" if p["stale"] else "error",
                  "state-stale" if p["stale"] else "state-error")] for p in doc.get("problems", [])]
    if doc.get("lastReloadError"):
        rows.insert(0, [text(""), text(""), text(doc["lastReloadError"]), text("reload failed", "state-error")])
    return rows


def reload_rows(doc: Mapping[str, Any]) -> List[List[Cell]]:
    return [[text(r["generation"]), text(when(r["at"])), text(r["trigger"]), text(f"{r['durationMs']} ms"),
             text(changes_text(r["changes"]) if r["swapped"] else "nothing swapped"),
             text(r["errors"], "state-error" if r["errors"] else "")] for r in doc.get("reloads", [])]


TABLES: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("routers", "Routers", ("Name", "Rule", "Priority", "Entry points", "Middlewares", "Service", "State",
                            "Requests", "Rate", "Latency")),
    ("problems", "Errors and stale files", ("File", "Object", "Reason", "State")),
    ("middlewares", "Middlewares", ("Name", "Type", "State", "Keys and outcomes")),
    ("services", "Services", ("Name", "Type", "Servers", "State", "Health")),
    ("reloads", "Reload history", ("Generation", "Time", "Trigger", "Duration", "Changes", "Errors")),
)


def build_view(doc: Mapping[str, Any], now: Optional[float] = None) -> Dict[str, Any]:
    """The state as titles and rows of cells: the one thing both the HTML and ``state.json`` show."""
    from gatekeeper.ops.admin import mask

    now = time.time() if now is None else now
    rows = {"routers": router_rows(doc), "problems": problem_rows(doc),
            "middlewares": middleware_rows(doc, now), "services": service_rows(doc), "reloads": reload_rows(doc)}
    summary = (f"generation {doc.get('generation', 0)} · {len(doc.get('routers', []))} routers · "
               f"{len(doc.get('problems', []))} problems · updated {when(now)}")
    return json.loads(mask(json.dumps({"summary": summary, "tables": rows})))


# --- rendering: the server's HTML; the page's script does the same with textContent ----------------------

def sparkline_svg(values: List[float], unit: str) -> str:
    """An inline SVG polyline (numbers only) with the latest value as text."""
    if not values:
        return '<span class="spark-empty">no data</span>'
    top = max(values) or 1.0
    step = 100 / max(len(values) - 1, 1)
    points = " ".join(f"{i * step:.1f},{20 - v / top * 18:.1f}" for i, v in enumerate(values))
    return (f'<svg class="spark" viewBox="0 0 100 21" preserveAspectRatio="none" role="img">'
            f'<polyline points="{points}"/></svg><span class="spark-last">{values[-1]:g} {html.escape(unit)}</span>')


def cell_html(cell: Cell) -> str:
    if "spark" in cell:
        return f'<td class="spark-cell">{sparkline_svg(cell["spark"], cell["unit"])}</td>'
    cls = f' class="{html.escape(cell["cls"])}"' if cell.get("cls") else ""
    return f"<td{cls}>{html.escape(cell['text'])}</td>"


def table_html(key: str, title: str, headings: Tuple[str, ...], rows: List[List[Cell]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(cell_html(c) for c in row) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td class="none" colspan="{len(headings)}">none</td></tr>'
    return (f'<section><h2>{html.escape(title)}</h2><table id="{key}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></section>")


def page_html(view: Mapping[str, Any]) -> str:
    tables = "".join(table_html(key, title, headings, view["tables"][key]) for key, title, headings in TABLES)
    return (PAGE.replace("%SUMMARY%", html.escape(view["summary"])).replace("%TABLES%", tables)
            .replace("%SCRIPT%", SCRIPT.replace("</", "<\\/")))


def make_dashboard(state: Callable[[], Mapping[str, Any]], prefix: str = "/dashboard") -> WSGIApp:
    """The dashboard WSGI app: ``{prefix}/`` the page, ``{prefix}/state.json`` the cells the page polls.

    Mount it on the admin app for paths under ``prefix``; ``state()`` is a :class:`DashboardSource` or
    anything returning the same shape (``/config``'s document plus problems, reloads, traffic).
    """
    def respond(start_response: Callable, status: str, body: bytes, content_type: str,
                extra: Tuple[Tuple[str, str], ...] = ()) -> List[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                                ("Content-Security-Policy", CSP), *extra])
        return [body]

    def dashboard(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return respond(start_response, "405 Method Not Allowed", b"GET only\n", "text/plain")
        if path == prefix:
            return respond(start_response, "308 Permanent Redirect", b"", "text/plain",
                           (("Location", prefix + "/"),))
        if path == prefix + "/":
            body = page_html(build_view(state())).encode()
            return respond(start_response, "200 OK", body, "text/html; charset=utf-8")
        if path == prefix + "/state.json":
            # "<" as \u003c: the feed holds raw names; no sniffing browser may ever read markup in it.
            body = json.dumps(build_view(state())).replace("<", "\\u003c").encode()
            return respond(start_response, "200 OK", body, "application/json")
        return respond(start_response, "404 Not Found", b"not found\n", "text/plain")
    return dashboard


# The page allows only its own inline style and script, and fetches only from itself.
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>gatekeeper dashboard</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5rem 2rem;color:#1d2430;background:#f6f7f9}
header{display:flex;align-items:baseline;gap:1rem;border-bottom:2px solid #2f5d8a;margin-bottom:.5rem}
h1{font-size:1.3rem;margin:.8rem 0 .4rem;color:#2f5d8a}h2{font-size:1.05rem;margin:1.2rem 0 .3rem}
#summary{color:#556}#live{margin-left:auto;font-size:.85rem;color:#889}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0001}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef1f5;font-weight:600;font-size:.85rem}
td.code{font-family:ui-monospace,monospace;font-size:.85rem;word-break:break-all}td.name{font-weight:600}
.state-ok{color:#1a7f37}.state-error{color:#c62828;font-weight:600}.state-stale{color:#b26a00;font-weight:600}
td.none{color:#99a}td.spark-cell{white-space:nowrap}.spark{width:90px;height:22px;vertical-align:middle}
.spark polyline{fill:none;stroke:#2f5d8a;stroke-width:1.5;vector-effect:non-scaling-stroke}
.spark-last{font-size:.8rem;color:#556;margin-left:.3rem}.spark-empty{color:#99a;font-size:.8rem}
</style></head><body>
<header><h1>gatekeeper</h1><span id="summary">%SUMMARY%</span><span id="live">static (JavaScript off)</span></header>
<main id="tables">%TABLES%</main>
<script>%SCRIPT%</script>
</body></html>
"""

# Builds the same markup as cell_html/sparkline_svg, with textContent and attributes only (never innerHTML).
SCRIPT = r"""
"use strict";
const SVG = "http://www.w3.org/2000/svg";
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
function spark(values, unit) {
  const td = el("td", "spark-cell");
  if (!values.length) { td.appendChild(el("span", "spark-empty", "no data")); return td; }
  const top = Math.max(...values) || 1, step = 100 / Math.max(values.length - 1, 1);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark"); svg.setAttribute("viewBox", "0 0 100 21");
  svg.setAttribute("preserveAspectRatio", "none"); svg.setAttribute("role", "img");
  const line = document.createElementNS(SVG, "polyline");
  const point = (v, i) => (i * step).toFixed(1) + "," + (20 - v / top * 18).toFixed(1);
  line.setAttribute("points", values.map(point).join(" "));
  svg.appendChild(line); td.appendChild(svg);
  td.appendChild(el("span", "spark-last", values[values.length - 1] + " " + unit));
  return td;
}
function cell(c) { return "spark" in c ? spark(c.spark, c.unit) : el("td", c.cls || "", c.text); }
function fill(table, rows) {
  const body = el("tbody"), columns = table.tHead.rows[0].cells.length;
  for (const row of rows) {
    const tr = el("tr");
    for (const c of row) tr.appendChild(cell(c));
    body.appendChild(tr);
  }
  if (!rows.length) {
    const td = el("td", "none", "none");
    td.colSpan = columns;
    body.appendChild(el("tr")).appendChild(td);
  }
  table.replaceChild(body, table.tBodies[0]);
}
const live = document.getElementById("live");
async function refresh() {
  try {
    const answer = await fetch("state.json", {cache: "no-store"});
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    const view = await answer.json();
    document.getElementById("summary").textContent = view.summary;
    for (const [key, rows] of Object.entries(view.tables)) {
      const table = document.getElementById(key);
      if (table) fill(table, rows);
    }
    live.textContent = "live";
  } catch (err) {
    live.textContent = "disconnected: " + err.message;
  } finally {
    setTimeout(refresh, 1000);
  }
}
live.textContent = "live";
setTimeout(refresh, 1000);
"""
