"""Services made of services: the smooth weighted round robin itself, ``weighted`` and ``failover``.

Health is pulled, not pushed: a member that can tell (a load balancer with a health check, a weighted or
failover service over such members) has ``healthy()``, and a parent asks it per request (a list of booleans;
the WRR order is rebuilt only when the set of members up changes). Nothing is registered on a member, so a
load balancer that a reload reuses carries no trace of the parents of older configurations.

Usage::

    split = Weighted([(blue, 3), (green, 1)], name="app@file", sticky=None, skip_down=True,
                     identities=["blue@file", "green@file"])
    safe = Failover(split, maintenance_page)
"""
from __future__ import annotations

import itertools
from typing import Any, Generic, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar

from gatekeeper.proxy.sticky import StickyCookie, StickyDef
from gatekeeper.wsgi import Environ, StartResponse, WSGIApp, error_response

__all__ = ["NO_SERVER", "Balancer", "Failover", "Weighted", "is_healthy", "smooth_weighted_order"]

T = TypeVar("T")

WRR_PRECOMPUTE_LIMIT = 10_000
NO_SERVER = error_response(503, "no server available")


def is_healthy(app: Any) -> bool:
    """A member's health: its ``healthy()``, or True for one that cannot tell (no health check)."""
    healthy = getattr(app, "healthy", None)
    return True if healthy is None else bool(healthy())


def smooth_weighted_order(weights: Sequence[int]) -> Iterator[int]:
    """Indexes in nginx's smooth weighted round-robin order (3:1 gives a, a, b, a, ...).

    One period (sum of weights) is precomputed and cycled; a very long period is generated lazily; one server
    is a constant (most services of a large conf.d have one: 10,000 cycles cost about 20 ms of a cold load).

    >>> import itertools
    >>> list(itertools.islice(smooth_weighted_order([3, 1]), 8)), next(smooth_weighted_order([5]))
    ([0, 0, 1, 0, 0, 0, 1, 0], 0)
    """
    if len(weights) == 1 and weights[0] > 0:
        return itertools.repeat(0)
    def generate() -> Iterator[int]:
        current = [0] * len(weights)
        total = sum(weights)
        while True:
            for i, weight in enumerate(weights):
                current[i] += weight
            best = max(range(len(weights)), key=current.__getitem__)
            current[best] -= total
            yield best
    total = sum(weights)
    if total <= WRR_PRECOMPUTE_LIMIT:
        return itertools.cycle(list(itertools.islice(generate(), total)))
    return generate()


class Balancer(Generic[T]):
    """Picks among weighted items in smooth WRR order; zero-weight items never get picked."""

    def __init__(self, items: Sequence[Tuple[T, int]]) -> None:
        live = [(item, weight) for item, weight in items if weight > 0]
        self.items: List[T] = [item for item, _ in live]
        self.order = smooth_weighted_order([w for _, w in live]) if live else None

    def pick(self) -> Optional[T]:
        # next() on itertools.cycle holds the GIL: safe with threads too; gevent never switches here.
        return self.items[next(self.order)] if self.order is not None else None


class Weighted:
    """WSGI app for a ``weighted`` service: members in smooth WRR order by weight.

    ``skip_down`` (Traefik's ``weighted.healthCheck: {}``): members that are down leave the rotation. A
    sticky cookie is honoured only for a member of this service that is up and has a weight.
    """

    def __init__(self, children: Sequence[Tuple[WSGIApp, int]], *, name: str, sticky: Optional[StickyDef],
                 skip_down: bool, identities: Sequence[str]) -> None:
        self.children: List[WSGIApp] = [app for app, _ in children]
        self.weights = [weight for _, weight in children]
        self.skip_down = skip_down
        self.sticky = StickyCookie(sticky, name, identities) if sticky is not None else None
        self.state: Tuple[bool, ...] = (True,) * len(self.children)
        self.balancer: Balancer[int] = Balancer(list(enumerate(self.weights)))

    def members_up(self) -> Tuple[bool, ...]:
        return tuple(is_healthy(child) for child in self.children)

    def healthy(self) -> bool:
        return any(up and weight > 0 for up, weight in zip(self.members_up(), self.weights))

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self.skip_down:
            state = self.members_up()
            if state != self.state:   # rebuilt only when the set of members up changes
                self.state = state
                self.balancer = Balancer([(i, w) for i, w in enumerate(self.weights) if state[i]])
        index = self.sticky.chosen(environ) if self.sticky is not None else None
        if index is None or self.weights[index] == 0 or not is_healthy(self.children[index]):
            index = self.balancer.pick()
            if index is None:
                return NO_SERVER(environ, start_response)
            if self.sticky is not None:
                start_response = self.sticky.setting(start_response, index)
        return self.children[index](environ, start_response)


class Failover:
    """WSGI app for a ``failover`` service: ``main`` while it has a server up, else ``fallback``."""

    def __init__(self, main: WSGIApp, fallback: WSGIApp) -> None:
        self.main, self.fallback = main, fallback

    def healthy(self) -> bool:
        return is_healthy(self.main) or is_healthy(self.fallback)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if is_healthy(self.main):
            return self.main(environ, start_response)
        return self.fallback(environ, start_response)
