"""Traefik's inFlightReq: at most ``amount`` requests at once per source, the next answered 429.

A request counts from the moment it passes until its answer ends: the body the service returned is wrapped
and the count released in its ``close()``, which the server calls however the answer ends (sent whole,
the client gone, the upstream failing mid-body, a stream closed early). A service that raises releases at
once. Counts live in this process (``--workers N``: each worker counts alone) and only sources with a
request in flight are kept, so memory is bounded by the requests being served. As in Traefik, the source
is the request's ``Host`` unless ``sourceCriterion`` says otherwise.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Iterable, List, Mapping

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context, Wrapper, refusal
from gatekeeper.middlewares.source import source_criterion
from gatekeeper.options import pick, pick_case_insensitive, want_int
from gatekeeper.wsgi import Environ, OnClose, StartResponse, WSGIApp

OUTCOME = "too_many_in_flight"
STRATEGIES = ("ipStrategy", "requestHeaderName", "requestHost")


class InFlight:
    """Requests in flight per source, at most ``amount`` each.

    >>> counts = InFlight(2)
    >>> counts.enter("a"), counts.enter("a"), counts.enter("a"), counts.enter("b")
    (True, True, False, True)
    >>> counts.leave("a"); counts.enter("a"), len(counts.counts)
    (True, 2)
    """

    def __init__(self, amount: int) -> None:
        self.amount = amount
        self.counts: Dict[str, int] = {}
        self.lock = threading.Lock()

    def enter(self, source: str) -> bool:
        with self.lock:
            count = self.counts.get(source, 0)
            if count >= self.amount:
                return False
            self.counts[source] = count + 1
            return True

    def leave(self, source: str) -> None:
        with self.lock:
            count = self.counts.get(source, 0) - 1
            if count > 0:
                self.counts[source] = count
            else:
                self.counts.pop(source, None)


class Released(OnClose):
    """The service's answer body, releasing its source's slot exactly once when closed."""

    def __init__(self, body: Iterable[bytes], counts: InFlight, source: str) -> None:
        super().__init__(body, lambda: counts.leave(source))

    def __del__(self) -> None:  # a server that never called close(): the slot must not leak
        self.finish()


class ReleasedList(list):  # type: ignore[type-arg]
    """A list answer stays a list (the server frames it with a computed ``Content-Length``), releasing its
    slot when closed.

    >>> counts = InFlight(1); counts.enter("a")
    True
    >>> body = released([b"ok"], counts, "a"); isinstance(body, list), counts.enter("a")
    (True, False)
    >>> body.close(); counts.enter("a")
    True
    """

    def __init__(self, body: List[bytes], slot: Released) -> None:
        super().__init__(body)
        self.slot = slot

    def close(self) -> None:
        self.slot.close()


def released(body: Iterable[bytes], counts: InFlight, source: str) -> Iterable[bytes]:
    """``body`` wrapped so that closing it releases the source's slot."""
    slot = Released(body, counts, source)
    return ReleasedList(body, slot) if isinstance(body, list) else slot


def read_amount(fields: Mapping[str, Any]) -> int:
    if "amount" not in fields:
        raise ConfigError("inFlightReq.amount: required")
    return want_int(fields["amount"], "inFlightReq.amount", minimum=1)


def with_default(criterion: Any) -> Any:
    """Traefik's default for inFlightReq is the request's Host (rateLimit's is the address): used when no
    strategy is set (``requestHost: false`` alone sets none).

    >>> with_default(None), with_default({"requestHost": False}), with_default({"requestHeaderName": "X-User"})
    ({'requestHost': True}, {'requestHost': True}, {'requestHeaderName': 'X-User'})
    """
    if criterion is None or (isinstance(criterion, dict) and not any(
            value not in (None, False, "") for value in pick_case_insensitive(criterion, STRATEGIES).values())):
        return {"requestHost": True}
    return criterion


def in_flight_req(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's inFlightReq: ``amount`` (required, > 0) and ``sourceCriterion`` (default: the Host)."""
    fields = pick(options, ("amount", "sourceCriterion"), "inFlightReq")
    amount = read_amount(fields)
    source_of = source_criterion(with_default(fields.get("sourceCriterion")), "inFlightReq.sourceCriterion")
    refuse = refusal(429, "too many requests in flight", context.name, OUTCOME)
    counts = InFlight(amount)  # one count per middleware, whichever routers use it

    def wrap(app: WSGIApp) -> WSGIApp:
        def limited(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            source = source_of(environ)
            if not counts.enter(source):
                return refuse(environ, start_response)
            try:
                body = app(environ, start_response)
            except BaseException:
                counts.leave(source)
                raise
            return released(body, counts, source)
        return limited
    return wrap
