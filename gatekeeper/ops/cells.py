"""The dashboard's view: the sampled state (``sampler.py``) -> filtered pages of cells, chosen field by field.

One vocabulary: an object's *state* is ``ok``, ``stale`` (its new version is in error, the last good one
serves) or ``error``; a service's *health* is separate: ``up``, ``degraded`` or ``down``, from its active
health checks and the 5xx answers of the routers using it over the last minute.

Cells are plain data (``{"text", "cls", "title", "href"}`` or ``{"spark": [...], "unit"}``): both the
server's HTML and the page's script render them as text, never as markup.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlencode

from gatekeeper.ops.view import mask

Cell = Dict[str, Any]
PAGE_SIZE = 50

TABLES: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("routers", "Routers", ("Name", "Rule", "Service", "Middlewares", "State", "Problem", "Requests", "Req/s",
                            "4xx/s", "5xx/s", "Rate", "Latency")),
    ("problems", "Errors and stale objects", ("File", "Object", "Reason", "State")),
    ("services", "Services", ("Name", "Type", "Servers", "State", "Health")),
    ("middlewares", "Middlewares", ("Name", "Type", "State", "Keys and outcomes")),
    ("reloads", "Reload history", ("Generation", "Time", "Trigger", "Duration", "Changes", "What broke")),
)


def plural(count: float, word: str) -> str:
    """``1 router``, ``2 routers``, ``1 stale object``.

    >>> plural(1, "problem"), plural(0, "problem"), plural(1200, "router")
    ('1 problem', '0 problems', '1,200 routers')
    """
    return f"{int(count):,} {word}{'' if int(count) == 1 else 's'}"


def when(seconds: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else ""


def short_name(name: str) -> str:
    return name[:-5] if name.endswith("@file") else name


def text(value: Any, cls: str = "", title: str = "", href: str = "") -> Cell:
    cell: Cell = {"text": "" if value is None else str(value), "cls": cls}
    if title:
        cell["title"] = title
    if href:
        cell["href"] = href
    return cell


def detail_link(kind: str, name: str) -> str:
    return "?" + urlencode({"kind": kind, "name": name})


def name_cell(kind: str, name: str) -> Cell:
    return text(short_name(name), "name", title=name, href=detail_link(kind, name))


def state_cell(state: str) -> Cell:
    return text(state, f"state-{state}")


def changes_text(changes: Mapping[str, List[str]], shown: int = 10) -> str:
    """``routers added: a, b; services changed: s`` (at most ``shown`` names a kind, then how many more).

    >>> changes_text({"routers_added": [f"r{i}@file" for i in range(12)], "services_removed": []})
    'routers added: r0, r1, r2, r3, r4, r5, r6, r7, r8, r9 and 2 more'
    """
    parts = [f"{kind.replace('_', ' ')}: {', '.join(short_name(n) for n in names[:shown])}"
             + (f" and {len(names) - shown:,} more" if len(names) > shown else "")
             for kind, names in sorted(changes.items()) if names]
    return "; ".join(parts) or "no object added, changed or removed"


def problem_text(problem: Mapping[str, Any]) -> str:
    where = f"{problem['object']} ({problem['file']})" if problem["object"] else problem["file"]
    return f"{problem['state']}: " + (f"{where}: " if where else "") + str(problem["reason"])


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


def routers_by_service(doc: Mapping[str, Any]) -> Dict[str, List[str]]:
    """Service name -> the routers using it (one pass, so a table of services is not routers x services)."""
    found: Dict[str, List[str]] = {}
    for r in doc.get("routers", []):
        found.setdefault(r["service"], []).append(r["name"])
    return found


def service_health(doc: Mapping[str, Any], name: str, service: Mapping[str, Any],
                   routers: Sequence[str]) -> Tuple[str, str]:
    """``(up | degraded | down, why)`` from the health checks and the last minute's 5xx answers of
    ``routers`` (those using the service)."""
    if service["state"] == "error":
        return "down", "not serving: its definition is in error"
    status = service.get("serverStatus") or {}
    down = sorted(url for url, st in status.items() if st != "UP")
    traffic = doc.get("traffic", {})
    used = [traffic[r] for r in routers if r in traffic]
    done, fives = sum(t.get("recent", 0) for t in used), sum(t.get("recent5xx", 0) for t in used)
    parts = [f"{len(status) - len(down)}/{plural(len(status), 'server')} up"] if status else []
    if done:
        parts.append(f"{int(fives)} of {plural(done, 'answer')} 5xx in the last minute")
    if service.get("health") and not status:
        parts.append(service["health"])
    if (status and len(down) == len(status)) or (done and fives == done):
        return "down", "; ".join(parts)
    if down or fives or "fallback" in service.get("health", ""):
        return "degraded", "; ".join(parts)
    return "up", "; ".join(parts) or "no health check, no 5xx in the last minute"


class Table:
    """One table's rows, lazily: ``items`` (records as the state holds them), ``facts(item)`` -> (name, text,
    state) that search and the state filter look at, and ``cells(item)`` called only for the page shown."""

    def __init__(self, items: Sequence[Any], facts: Callable[[Any], Tuple[str, str, str]],
                 cells: Callable[[Any], List[Cell]]) -> None:
        self.items, self.facts, self.cells = items, facts, cells


def router_table(doc: Mapping[str, Any]) -> Table:
    traffic: Mapping[str, Any] = doc.get("traffic", {})
    return Table(doc.get("routers", []), lambda r: (r["name"], r["rule"], r["state"]),
                 lambda r: router_cells(r, traffic.get(r["name"], {})))


def router_cells(r: Mapping[str, Any], seen: Mapping[str, Any]) -> List[Cell]:
    statuses = ", ".join(f"{code}: {int(n)}" for code, n in sorted(seen.get("status", {}).items()))
    return [name_cell("router", r["name"]), text(r["rule"], "code rule", title=r["rule"]),
            name_cell("service", r["service"]), text(", ".join(short_name(m) for m in r["middlewares"])),
            state_cell(r["state"]), text(r.get("error") or "", "problem", title=r.get("error") or ""),
            text(f"{int(seen.get('requests', 0))}", "num", title=f"since start, by status: {statuses or 'none'}"),
            text(f"{seen.get('rate', 0):g}", "num"), text(f"{seen.get('rate4xx', 0):g}", "num"),
            text(f"{seen.get('rate5xx', 0):g}", "num" + (" state-error" if seen.get("rate5xx") else "")),
            {"spark": [round(x, 2) for x in seen.get("rateSeries", [])], "unit": "req/s"},
            {"spark": [round(x, 2) for x in seen.get("latencyMs", [])], "unit": "ms"}]


def middleware_outcomes(doc: Mapping[str, Any]) -> Dict[str, Dict[str, float]]:
    """JWT outcomes per middleware, summed over the routers using it (one pass over the routers with traffic)."""
    outcomes: Dict[str, Dict[str, float]] = {}
    traffic = doc.get("traffic", {})
    if not traffic:
        return outcomes
    for r in doc.get("routers", []):
        seen = traffic.get(r["name"], {}).get("jwt", {})
        for name in r["middlewares"] if seen else ():
            mine = outcomes.setdefault(name, {})
            for outcome, n in seen.items():
                mine[outcome] = mine.get(outcome, 0) + n
    return outcomes


def middleware_table(doc: Mapping[str, Any], now: float) -> Table:
    outcomes: List[Dict[str, Dict[str, float]]] = []   # worked out on the first JWT row shown

    def cells(item: Tuple[str, Mapping[str, Any]]) -> List[Cell]:
        name, m = item
        details = m.get("error") or ""
        if m["kind"] == "plugin.jwt":
            outcomes[:] = outcomes or [middleware_outcomes(doc)]
            details = (key_set_text(m.get("options", {}).get("keySource"), doc.get("keySets", {}).get(name, {}),
                                    now) + " | " + jwt_outcomes_text(outcomes[0].get(name, {})))
        return [name_cell("middleware", name), text(m["kind"]), state_cell(m["state"]), text(details)]
    return Table(list(doc.get("middlewares", {}).items()), lambda item: (item[0], item[1]["kind"], item[1]["state"]),
                 cells)


def service_table(doc: Mapping[str, Any]) -> Table:
    using: List[Dict[str, List[str]]] = []              # worked out on the first row shown

    def cells(item: Tuple[str, Mapping[str, Any]]) -> List[Cell]:
        name, s = item
        status = s.get("serverStatus") or {}
        members = [f"{srv['url']} (weight {srv['weight']}{', DOWN' if status.get(srv['url'], 'UP') != 'UP' else ''})"
                   for srv in s.get("servers", [])]
        members += [f"{short_name(c['service'])} (weight {c['weight']})" for c in s.get("children", [])]
        using[:] = using or [routers_by_service(doc)]
        health, why = service_health(doc, name, s, using[0].get(name, ()))
        return [name_cell("service", name), text(s["kind"]), text("; ".join(members), "code"),
                state_cell(s["state"]), text(health, f"health-{health}", title=why)]

    def facts(item: Tuple[str, Mapping[str, Any]]) -> Tuple[str, str, str]:
        return item[0], " ".join(srv["url"] for srv in item[1].get("servers", [])), item[1]["state"]
    return Table(list(doc.get("services", {}).items()), facts, cells)


def problem_table(doc: Mapping[str, Any]) -> Table:
    items = list(doc.get("problems", []))
    if doc.get("lastReloadError"):
        items.insert(0, {"file": "", "object": "", "reason": doc["lastReloadError"], "state": "error"})
    return Table(items, lambda p: (p["object"] or p["file"], p["reason"], p["state"]),
                 lambda p: [text(p["file"], "code"), text(p["object"]), text(p["reason"]), state_cell(p["state"])])


def reload_cells(r: Mapping[str, Any]) -> List[Cell]:
    broke = [problem_text(p) for p in r.get("broke", [])]
    fixed = [f"fixed: {p['object'] or p['file']}" for p in r.get("fixed", [])]
    return [text(r["generation"]), text(when(r["at"])), text(r["trigger"]), text(f"{r['durationMs']} ms"),
            text(changes_text(r["changes"]) if r["swapped"] else "nothing swapped"),
            text("\n".join(broke + fixed) or "nothing", "broke" + (" state-error" if broke else ""))]


def reload_table(doc: Mapping[str, Any]) -> Table:
    return Table(doc.get("reloads", []), lambda r: (str(r["generation"]), r["trigger"], "ok"), reload_cells)


def matches(facts: Tuple[str, str, str], q: str, state: str) -> bool:
    name, words, found_state = facts
    if state and found_state != state:
        return False
    return not q or q in name.lower() or q in words.lower()


def page_of(table: Table, query: Mapping[str, str], key: str, noun: str) -> Dict[str, Any]:
    """The rows matching the query, cut to the asked page (1-based, clamped); cells only for that page."""
    q, state = query.get("q", "").strip().lower(), query.get("state", "")
    items = table.items
    found = [item for item in items if matches(table.facts(item), q, state)] if (q or state) else items
    pages = max((len(found) + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    try:
        page = min(max(int(query.get(f"page_{key}", "1")), 1), pages)
    except ValueError:
        page = 1
    shown = [table.cells(item) for item in found[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]]
    total = len(items)
    count = plural(total, noun) if len(found) == total else f"{len(found):,} of {plural(total, noun)}"
    return {"rows": shown, "total": total, "matching": len(found), "page": page, "pages": pages,
            "countText": count, "pageText": f"page {page} of {pages}" if pages > 1 else ""}


def detail(doc: Mapping[str, Any], kind: str, name: str) -> Optional[Dict[str, Any]]:
    """One object's fields (label, text, css class) for the detail view; None when it is not loaded."""
    fields: List[Tuple[str, str, str]] = []
    if kind == "router":
        r = next((r for r in doc.get("routers", []) if r["name"] == name), None)
        if r is None:
            return None
        seen = doc.get("traffic", {}).get(name, {})
        fields += [("Rule", r["rule"], "code"), ("Priority", str(r["priority"]), ""),
                   ("Entry points", ", ".join(r["entryPoints"]) or "all", ""), ("Source", r["source"], "code"),
                   ("State", r["state"], f"state-{r['state']}"), ("Error", r.get("error") or "none", ""),
                   ("Service", r["service"], "")]
        for m in r["middlewares"]:
            shown = doc.get("middlewares", {}).get(m)
            options = json.dumps(shown.get("options", {}), sort_keys=True) if shown else "not defined"
            fields.append((f"Middleware {m}", f"{shown['kind'] if shown else ''} {options}".strip(), "code"))
        fields.append(("Last minute", f"{plural(seen.get('recent', 0), 'request')}, {int(seen.get('recent4xx', 0))}"
                                      f" 4xx, {int(seen.get('recent5xx', 0))} 5xx ({int(seen.get('requests', 0))} "
                                      "since start)", ""))
    elif kind in ("service", "middleware"):
        obj = doc.get(kind + "s", {}).get(name)
        if obj is None:
            return None
        fields += [("Type", obj["kind"], ""), ("Source", obj["source"], "code"),
                   ("State", obj["state"], f"state-{obj['state']}"), ("Error", obj.get("error") or "none", "")]
        if kind == "service":
            health, why = service_health(doc, name, obj, routers_by_service(doc).get(name, ()))
            status = obj.get("serverStatus") or {}
            fields.append(("Health", f"{health}: {why}", f"health-{health}"))
            fields += [(f"Server {s['url']}", f"weight {s['weight']}, " + (
                status.get(s["url"], "not checked").lower()), "code") for s in obj.get("servers", [])]
            fields += [(f"Child {c['service']}", f"weight {c['weight']}", "") for c in obj.get("children", [])]
        else:
            fields.append(("Options", json.dumps(obj.get("options", {}), sort_keys=True), "code"))
        used = [r["name"] for r in doc.get("routers", []) if r["service"] == name or name in r["middlewares"]]
        fields.append(("Used by", ", ".join(used) or "no router", ""))
    else:
        return None
    return {"title": f"{kind} {name}", "fields": fields}


def build_view(doc: Mapping[str, Any], query: Mapping[str, str] = {}, now: Optional[float] = None) -> Dict[str, Any]:
    """The state as the page shows it: summary, notice, one page of each table, the selected object."""
    now = time.time() if now is None else now
    tables = {"routers": page_of(router_table(doc), query, "routers", "router"),
              "problems": page_of(problem_table(doc), query, "problems", "problem"),
              "services": page_of(service_table(doc), query, "services", "service"),
              "middlewares": page_of(middleware_table(doc, now), query, "middlewares", "middleware"),
              "reloads": page_of(reload_table(doc), {}, "reloads", "reload")}
    stale = doc.get("stale", [])
    errors = sum(1 for p in doc.get("problems", []) if p["state"] == "error")
    summary = (f"generation {doc.get('generation', 0)} · {plural(len(doc.get('routers', [])), 'router')} · "
               f"{plural(len(stale), 'stale object')} · {plural(errors, 'error')} · updated {when(now)}")
    notice = ""
    if stale:
        names = ", ".join(f"{s['kind']} {short_name(s['name'])} (since {when(s['since'])})" for s in stale[:5])
        notice = (f"Serving the last good version of {plural(len(stale), 'stale object')}: {names}"
                  f"{' …' if len(stale) > 5 else ''}. A fresh process on these files would answer 503 for the "
                  "routers using them (gatekeeper check lists them).")
    view: Dict[str, Any] = {"summary": summary, "notice": notice, "tables": tables,
                            "detail": detail(doc, query.get("kind", ""), query.get("name", ""))}
    masked: Dict[str, Any] = json.loads(mask(json.dumps(view)))
    return masked
