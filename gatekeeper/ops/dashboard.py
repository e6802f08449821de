"""A read-only dashboard for the admin listener: ``/dashboard/`` (HTML) and ``/dashboard/state.json``.

One page, no build step and no external assets. The server renders the page (it reads the same with
JavaScript off: search and pages are links and a GET form); with JavaScript on, the page polls
``state.json`` with its own query string once a second and redraws in place.

Only what is visible is built: the tables are filtered (``q`` matches names, rules, servers; ``state`` is
``ok``, ``stale`` or ``error``) and cut into pages of :data:`PAGE_SIZE` rows on the server, so a page over
10,000 routers costs one page of cells. ``kind`` and ``name`` select an object for the detail view.

Safety is by construction rather than by filtering: :mod:`cells` turns the state into *cells* (short texts
chosen field by field), the server renders them with ``html.escape`` and the browser with ``textContent``.
Values of secret-bearing options are masked in every text shown (an error message could quote one).

Usage::

    source = sampler.DashboardSource(loader, metrics.exposition).start()   # loader: a ConfigLoader
    dashboard = make_dashboard(source)                 # WSGI app answering /dashboard/...
"""
from __future__ import annotations

import html
import json
import re
import time
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import urlencode

from werkzeug.wrappers import Request, Response

from gatekeeper.ops.cells import TABLES, Cell, build_view, when
from gatekeeper.wsgi import Environ, StartResponse, WSGIApp

__all__ = ["CSP", "TABLES", "build_view", "make_dashboard", "page_html", "sparkline_svg", "when"]

PLACEHOLDER = re.compile(r"%(SUMMARY|NOTICE|FORM|DETAIL|TABLES|SCRIPT)%")
QUERY_KEYS = ("q", "state", "kind", "name", *(f"page_{key}" for key, _, _ in TABLES))


# --- rendering: the server's HTML; the page's script builds the same markup with textContent --------------

def sparkline_svg(values: List[float], unit: str) -> str:
    """An inline SVG polyline (numbers only) with the latest value as text."""
    if not values:
        return '<span class="spark-empty">no data</span>'
    top = max(values) or 1.0
    step = 100 / max(len(values) - 1, 1)
    points = " ".join(f"{i * step:.1f},{20 - v / top * 18:.1f}" for i, v in enumerate(values))
    return (f'<svg class="spark" viewBox="0 0 100 21" preserveAspectRatio="none" role="img">'
            f'<polyline points="{points}"/></svg><span class="spark-last">{values[-1]:g} {html.escape(unit)}</span>')


def query_link(query: Mapping[str, str], **changes: Any) -> str:
    """``?q=...&page_routers=2``: the current query with ``changes`` (None drops a key)."""
    merged = {k: v for k, v in {**query, **changes}.items() if v not in (None, "")}
    return "?" + urlencode(sorted(merged.items()))


def cell_html(cell: Cell) -> str:
    if "spark" in cell:
        return f'<td class="spark-cell">{sparkline_svg(cell["spark"], cell["unit"])}</td>'
    attrs = f' class="{html.escape(cell["cls"])}"' if cell.get("cls") else ""
    attrs += f' title="{html.escape(cell["title"])}"' if cell.get("title") else ""
    inner = html.escape(cell["text"])
    if cell.get("href"):
        inner = f'<a href="{html.escape(cell["href"])}">{inner}</a>'
    return f"<td{attrs}>{inner}</td>"


def pager_html(key: str, table: Mapping[str, Any], query: Mapping[str, str]) -> str:
    links = [f'<span class="page-of">{html.escape(table["pageText"])}</span>']
    for label, page in (("‹ previous", table["page"] - 1), ("next ›", table["page"] + 1)):
        if 1 <= page <= table["pages"]:
            links.append(f'<a href="{html.escape(query_link(query, **{f"page_{key}": page}))}">{label}</a>')
    return f'<nav class="pager" id="{key}-pager">{" ".join(links)}</nav>'


def table_html(key: str, title: str, headings: Tuple[str, ...], table: Mapping[str, Any],
               query: Mapping[str, str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(cell_html(c) for c in row) + "</tr>" for row in table["rows"])
    if not table["rows"]:
        body = f'<tr><td class="none" colspan="{len(headings)}">none</td></tr>'
    return (f'<section><h2>{html.escape(title)} <span class="count" id="{key}-count">'
            f'{html.escape(table["countText"])}</span></h2><table id="{key}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>{pager_html(key, table, query)}</section>")


def detail_html(detail: Optional[Mapping[str, Any]], query: Mapping[str, str]) -> str:
    if not detail:
        return '<section id="detail" hidden></section>'
    rows = "".join(f'<tr><th>{html.escape(label)}</th><td class="{html.escape(cls)}">{html.escape(value)}</td></tr>'
                   for label, value, cls in detail["fields"])
    close = html.escape(query_link(query, kind=None, name=None))
    return (f'<section id="detail"><h2>{html.escape(detail["title"])} <a class="close" href="{close}">close</a>'
            f'</h2><table class="fields"><tbody>{rows}</tbody></table></section>')


def form_html(query: Mapping[str, str]) -> str:
    options = "".join(f'<option value="{v}"{" selected" if query.get("state") == v else ""}>{label}</option>'
                      for v, label in (("", "any state"), ("ok", "ok"), ("stale", "stale"), ("error", "error")))
    return (f'<form id="search" method="get" action=""><input type="search" name="q" placeholder="Search names, '
            f'rules, servers" value="{html.escape(query.get("q", ""))}" autocomplete="off"><select name="state">'
            f'{options}</select><button type="submit">Search</button></form>')


@lru_cache(maxsize=None)
def page_file(name: str) -> str:
    """A file of the page (``static/dashboard.html``, ``.js``), package data read once."""
    return resources.files("gatekeeper.ops").joinpath("static", name).read_text(encoding="utf-8")


def page_html(view: Mapping[str, Any], query: Mapping[str, str] = {}) -> str:
    """The whole page: the server-rendered view in the template, the script inlined (the CSP allows no
    other source)."""
    tables = "".join(table_html(key, title, headings, view["tables"][key], query)
                     for key, title, headings in TABLES)
    parts = {"SUMMARY": html.escape(view["summary"]), "NOTICE": html.escape(view["notice"]),
             "FORM": form_html(query), "DETAIL": detail_html(view.get("detail"), query), "TABLES": tables,
             "SCRIPT": page_file("dashboard.js").replace("</", "<\\/")}
    # one pass: a name spelling %SCRIPT% or %FORM% stays text (what is filled in is never scanned again)
    return PLACEHOLDER.sub(lambda match: parts[match.group(1)], page_file("dashboard.html"))


def query_of(request: Request) -> Dict[str, str]:
    """The view's query: only the known keys, each a short string."""
    return {key: request.args.get(key, "")[:200] for key in QUERY_KEYS if request.args.get(key)}


def make_dashboard(state: Callable[[], Mapping[str, Any]], prefix: str = "/dashboard") -> WSGIApp:
    """The dashboard WSGI app: ``{prefix}/`` the page, ``{prefix}/state.json`` the view the page polls.

    Mount it on the admin app for paths under ``prefix``; ``state()`` is a :class:`DashboardSource` or
    anything returning the same shape (``/config``'s document plus problems, stale, reloads, traffic).
    """
    page_file("dashboard.html"), page_file("dashboard.js")  # a missing page fails here, not on a request

    def respond(body: bytes, content_type: str, status: int = 200) -> Response:
        return Response(body, status=status, content_type=content_type,
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                 "Content-Security-Policy": CSP})

    def answer(request: Request) -> Response:
        path = request.path
        if request.method not in ("GET", "HEAD"):
            response = respond(b"GET only\n", "text/plain", 405)
            response.headers["Allow"] = "GET, HEAD"
            return response
        if path == prefix:
            response = respond(b"", "text/plain", 308)
            response.headers["Location"] = prefix + "/"
            return response
        if path not in (prefix + "/", prefix + "/state.json"):
            return respond(b"not found\n", "text/plain", 404)
        started = time.perf_counter()
        query = query_of(request)
        view = build_view(state(), query)
        view["builtMs"] = round((time.perf_counter() - started) * 1000, 1)
        if path == prefix + "/":
            return respond(page_html(view, query).encode(), "text/html; charset=utf-8")
        # "<" as \u003c: the feed holds raw names; no sniffing browser may ever read markup in it.
        return respond(json.dumps(view).replace("<", "\\u003c").encode(), "application/json")

    def dashboard(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        response: Iterable[bytes] = answer(Request(environ))(environ, start_response)
        return response
    return dashboard


# The page allows only its own inline style and script, fetches only from itself, and its search form
# submits only to itself.
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
