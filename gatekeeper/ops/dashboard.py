"""A read-only dashboard for the admin listener: ``/dashboard/`` (HTML) and ``/dashboard/state.json``.

One page, no build step and no external assets. The server renders every table, so the page reads the same
with JavaScript off; with JavaScript on, it polls ``state.json`` once a second and redraws the tables and
the per-router sparklines from it, so a manifest dropped into conf.d shows within a couple of seconds.

Safety is by construction rather than by filtering: :func:`build_view` turns the state into *cells* (short
texts chosen field by field; never a middleware's options), the server renders cells with ``html.escape``
and the browser with ``textContent``. Values of secret-bearing options found in the loaded configuration are
also masked in every text shown (an error message could quote one).

The page itself (template and script) is package data in ``static/``; the state it shows comes from
``sampler.py``.

Usage::

    source = sampler.DashboardSource(loader)         # loader: gatekeeper.config.reload.ConfigLoader
    source.start()                                   # samples traffic and reloads once a second
    dashboard = make_dashboard(source)               # WSGI app answering /dashboard/...
"""
from __future__ import annotations

import html
import json
import time
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from gatekeeper.ops.view import mask
from gatekeeper.wsgi import Environ, StartResponse, WSGIApp

Cell = Dict[str, Any]          # {"text": str, "cls": str} or {"spark": [numbers], "unit": str}


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
        down = {url for url, status in s.get("serverStatus", {}).items() if status != "UP"}
        members = [f"{srv['url']} (weight {srv['weight']}{', DOWN' if srv['url'] in down else ''})"
                   for srv in s.get("servers", [])]
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
    now = time.time() if now is None else now
    rows = {"routers": router_rows(doc), "problems": problem_rows(doc),
            "middlewares": middleware_rows(doc, now), "services": service_rows(doc), "reloads": reload_rows(doc)}
    summary = (f"generation {doc.get('generation', 0)} · {len(doc.get('routers', []))} routers · "
               f"{len(doc.get('problems', []))} problems · updated {when(now)}")
    view: Dict[str, Any] = json.loads(mask(json.dumps({"summary": summary, "tables": rows})))
    return view


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


@lru_cache(maxsize=None)
def page_file(name: str) -> str:
    """A file of the page (``static/dashboard.html``, ``.js``), package data read once."""
    return resources.files("gatekeeper.ops").joinpath("static", name).read_text(encoding="utf-8")


def page_html(view: Mapping[str, Any]) -> str:
    """The whole page: the server-rendered tables in the template, the script inlined (the CSP allows no
    other source)."""
    tables = "".join(table_html(key, title, headings, view["tables"][key]) for key, title, headings in TABLES)
    script = page_file("dashboard.js").replace("</", "<\\/")
    return (page_file("dashboard.html").replace("%SUMMARY%", html.escape(view["summary"]))
            .replace("%TABLES%", tables).replace("%SCRIPT%", script))


def make_dashboard(state: Callable[[], Mapping[str, Any]], prefix: str = "/dashboard") -> WSGIApp:
    """The dashboard WSGI app: ``{prefix}/`` the page, ``{prefix}/state.json`` the cells the page polls.

    Mount it on the admin app for paths under ``prefix``; ``state()`` is a :class:`DashboardSource` or
    anything returning the same shape (``/config``'s document plus problems, reloads, traffic).
    """
    page_file("dashboard.html"), page_file("dashboard.js")  # a missing page fails here, not on a request

    def respond(start_response: StartResponse, status: str, body: bytes, content_type: str,
                extra: Tuple[Tuple[str, str], ...] = ()) -> List[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                                ("Content-Security-Policy", CSP), *extra])
        return [body]

    def dashboard(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
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
