"""Remote key sets: ``jwksUrl`` and ``trustedIssuers`` (with OpenID discovery), cached and refreshed.

A :class:`RemoteKeySet` holds the keys published at one URL (or found through one issuer's discovery
document). It is shared by every middleware naming the same URL with the same TLS settings, through a
module registry that outlives configuration reloads (:func:`key_sets` lists the live ones for the admin
endpoint). The rules, from docs/jwt.md "Remote key sets":

- Fetching happens off the request path (``fetch.py``: HTTP, TLS, redirects, cache lifetime); a
  background refresher fetches again shortly before the set's lifetime runs out.
- A ``kid`` the set does not hold triggers one refresh (single-flight: concurrent requests wait on the same
  fetch, each for at most its ``clientConfig.timeoutSeconds``), at most once per ``UNKNOWN_KID_INTERVAL``
  per set however many distinct kids arrive. Known keys keep verifying meanwhile.
- A failed refresh (network, non-200, bad JSON, no usable key) keeps the keys already held
  (stale-if-error), is retried with backoff up to ``clientConfig.maxRetries``, counted, and logged once
  per failure streak. A successful refresh replaces the set: a key the provider removed stops verifying.

Nothing touches the network until a set is first used to verify a token, or :func:`enable_prefetch` is
called by the serving process: ``gatekeeper check`` builds the same middlewares and stays offline.
With ``--workers`` that is each worker, after the fork: a thread started before fork() does not exist in
the child. After any fork the child's sets also drop their parent's lock, fetch in flight, refresher and
HTTP session (``os.register_at_fork``), keeping the keys, so a child never waits on its parent's state.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from gatekeeper.errors import ConfigError
from gatekeeper.jwt.fetch import (
    DISCOVERY_PATH,
    ClientConfig,
    FetchError,
    discover_jwks_uri,
    fetch_error,
    get_json,
)
from gatekeeper.jwt.jws import Verifier
from gatekeeper.jwt.keys import KeyIndex, read_jwk_set
from gatekeeper.jwt.refusals import unauthorized
from gatekeeper.options import safe_url

if TYPE_CHECKING:
    import requests

__all__ = ["FETCH_OBSERVERS", "RemoteKeySet", "enable_prefetch", "forget_all", "key_set", "key_sets"]

log = logging.getLogger("gatekeeper.jwks")

# Timings. Module constants read at call time, so tests can shrink them; these values are docs/jwt.md's.
REFRESH_AHEAD = 0.1            # the refresher fetches when this fraction of the lifetime is left
UNKNOWN_KID_INTERVAL = 10.0    # at most one request-triggered refresh per this many seconds, per set
RETRY_BACKOFF = 0.5            # first retry delay within a refresh, doubled each retry ...
MAX_BACKOFF = 8.0              # ... up to this
FAILURE_RETRY = 30.0           # after a refresh failed (retries included), the next background attempt


# --- the shared key set --------------------------------------------------------------------------------

class _Flight:
    """One fetch in progress; everyone who needs it waits on ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()


class RemoteKeySet:
    """The keys behind one JWKS URL or one issuer's discovery document: cached, refreshed, shared.

    Get one from :func:`key_set` (never build it directly, or it is not shared); read its health with
    :meth:`status`.

        >>> keyset = key_set("https://idp.example/keys", client=ClientConfig())
        >>> keyset.status()["keys"], keyset.status()["fetches"]
        (0, 0)
    """

    def __init__(self, *, url: Optional[str], issuer: Optional[str], client: ClientConfig) -> None:
        self.issuer = issuer                  # set: the URL is found by OpenID discovery from this issuer
        # for logs, status and metrics: without the userinfo or query a key set URL may hold
        self.name = safe_url(url or (issuer or "").rstrip("/") + DISCOVERY_PATH)
        self.client = client                  # the latest configuration's; see key_set()
        self.fetches = 0                      # fetch attempts (discovery and key set together count one)
        self.failures = 0                     # failed attempts
        self.last_error: Optional[str] = None
        self._jwks_uri = url
        self._index: Optional[KeyIndex] = None
        self._key_count = 0
        self._fetched_at: Optional[float] = None   # time.monotonic() of the last successful fetch
        self._lifetime = 0.0
        self._failed_at: Optional[float] = None    # end of the last failed refresh; None once one succeeds
        self._streak = 0                           # failed attempts since the last success
        self._flight: Optional[_Flight] = None
        self._request_refresh_at: Dict[str, float] = {}  # "kid" / "cold" -> last request-triggered refresh
        self._lock = threading.Lock()             # guards _flight and _request_refresh_at; never held over I/O
        self._wake = threading.Event()            # tells the refresher a fetch ended
        self._refresher: Optional[threading.Thread] = None
        self._session: Optional[requests.Session] = None
        self._epoch = 0                           # bumped after fork(): older refresher loops end

    def _reset_after_fork(self) -> None:
        """In a forked child: the parent's threads do not exist here, and a lock or a flight may have been
        caught mid-way. Drop them all; the keys already held stay, a refresher starts on the next use (or
        at once under :func:`enable_prefetch`)."""
        self._epoch += 1
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._flight = None
        self._refresher = None
        self._session = None       # its pooled connections are the parent's sockets
        self._request_refresh_at = {}

    # -- the request path ---------------------------------------------------------------------------------

    def candidates(self, alg: str, kid: Optional[str], wait: float) -> Sequence[Verifier]:
        """Verifiers for ``alg``/``kid``; a miss may refresh the set, waiting at most ``wait`` seconds."""
        if self._refresher is None:   # first use, or first use in a forked child
            self.start()
        index = self._index
        if index is None:
            index = self._refreshed_for_request("cold", wait)
            if index is None:
                raise unauthorized("no_keys")
        elif kid is not None and kid not in index.kids:
            index = self._refreshed_for_request("kid", wait) or index
        return index.select(alg, kid)

    def _refreshed_for_request(self, why: str, wait: float) -> Optional[KeyIndex]:
        """Join the fetch in flight, or start one unless a request started one for ``why`` too recently."""
        self.start()
        now = time.monotonic()
        with self._lock:
            if self._flight is None:
                last = self._request_refresh_at.get(why)
                if last is not None and now - last < UNKNOWN_KID_INTERVAL:
                    return self._index
                self._request_refresh_at[why] = now
        self.refresh().done.wait(wait)
        return self._index

    # -- fetching -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background refresher, which fetches at once; until then the set never touches the network."""
        with self._lock:
            if self._refresher is not None:
                return
            self._refresher = threading.Thread(target=_refresh_loop, args=(weakref.ref(self), self._epoch),
                                               daemon=True, name=f"jwks {self.name}")
        self._refresher.start()

    def refresh(self) -> _Flight:
        """The fetch in flight, or a new one: there is never more than one per set."""
        with self._lock:
            flight, new = self._flight, self._flight is None
            if new:
                flight = self._flight = _Flight()
        if new:
            threading.Thread(target=self._fly, args=(flight,), daemon=True, name=f"jwks fetch {self.name}").start()
        return flight  # type: ignore[return-value]

    def _fly(self, flight: _Flight) -> None:
        try:
            self._fetch_with_retries()
        except Exception:  # never let a bug leave waiters hanging; they are bounded anyway
            log.exception("%s: key set refresh failed unexpectedly", self.name)
        finally:
            with self._lock:
                if self._flight is flight:   # not a flight begun in a parent process before a fork
                    self._flight = None
            flight.done.set()
            self._wake.set()

    def _fetch_with_retries(self) -> None:
        delay = RETRY_BACKOFF
        for attempt in range(self.client.max_retries + 1):
            if attempt:
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
            try:
                self._install(*self._fetch_once())
            except FetchError as exc:
                self._note_failure(str(exc))
                self._tell_observers(ok=False)
            else:
                self._tell_observers(ok=True)
                return
        self._failed_at = time.monotonic()

    def _tell_observers(self, ok: bool) -> None:
        for observer in FETCH_OBSERVERS:
            try:
                observer(self, ok)
            except Exception:  # a broken observer (metrics) must not break fetching
                log.exception("%s: key set fetch observer %r failed", self.name, observer)

    def _fetch_once(self) -> Tuple[KeyIndex, int, float, List[str]]:
        client = self.client
        if self._session is None:
            import requests  # imported on first use: ~15 MiB a gateway without remote key sets never needs
            self._session = requests.Session()
        self.fetches += 1
        if self.issuer is not None and (self._jwks_uri is None or self._streak):
            self._jwks_uri = discover_jwks_uri(self._session, self.issuer, client)  # again after a failure
        document, lifetime = get_json(self._session, self._jwks_uri, client)  # type: ignore[arg-type]
        skipped: List[str] = []
        try:
            entries, count = read_jwk_set(document, "jwksUrl", skipped)
        except ConfigError as exc:
            raise fetch_error(self._jwks_uri or "", exc.reason.split(": ", 1)[-1]) from None
        return KeyIndex(entries), count, lifetime, skipped

    def _install(self, index: KeyIndex, count: int, lifetime: float, skipped: List[str]) -> None:
        """A successful fetch replaces the whole set (keys the provider dropped stop verifying)."""
        self._index, self._key_count = index, count
        self._fetched_at, self._lifetime, self._failed_at = time.monotonic(), lifetime, None
        if self._streak:
            log.info("%s: keys fetched again after %d failed attempt(s)", self.name, self._streak)
        self._streak = 0
        for problem in skipped:
            log.debug("%s: skipped %s", self.name, problem)

    def _note_failure(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason
        if self._streak == 0:  # once per failure streak; the counters tell the rest
            held = f"keeping the {self._key_count} key(s) already held" if self._index is not None else \
                "no keys yet: its tokens are refused until a fetch succeeds"
            log.warning("%s: fetching the key set failed (%s); %s", self.name, reason, held)
        self._streak += 1

    def seconds_until_refresh(self) -> Optional[float]:
        """When the refresher should fetch next; None while a fetch is in flight (it wakes when it ends)."""
        if self._flight is not None:
            return None
        now = time.monotonic()
        if self._failed_at is not None:
            return self._failed_at + FAILURE_RETRY - now
        if self._fetched_at is None:
            return 0.0
        return self._fetched_at + self._lifetime * (1 - REFRESH_AHEAD) - now

    # -- health -------------------------------------------------------------------------------------------

    def status(self) -> Dict[str, Any]:
        """Counters and state for the admin endpoint and logs."""
        now = time.monotonic()
        fetched = self._fetched_at
        return {
            "url": self.name,
            "jwks_uri": self._jwks_uri and safe_url(self._jwks_uri),
            "keys": self._key_count if self._index is not None else 0,
            "fetches": self.fetches,
            "failures": self.failures,
            "last_error": self.last_error,
            "age_seconds": None if fetched is None else round(now - fetched, 3),
            "expires_in_seconds": None if fetched is None else round(fetched + self._lifetime - now, 3),
            "stale": self._failed_at is not None and self._index is not None,
            "refreshing": self._flight is not None,
            "started": self._refresher is not None,
        }


def _refresh_loop(ref: "weakref.ref[RemoteKeySet]", epoch: int) -> None:
    """Keep one set fresh: fetch, sleep until shortly before expiry (or FAILURE_RETRY), repeat.

    It holds the set only weakly while it sleeps, so a set no configuration uses any more is collected
    and its refresher ends at its next wake-up. It also ends when the set was reset after a fork (a
    greenlet scheduled before fork() is copied into the child, where the set has its own refresher).
    """
    while True:
        keyset = ref()
        if keyset is None or keyset._epoch != epoch:
            return
        delay, wake = keyset.seconds_until_refresh(), keyset._wake
        if delay is not None and delay <= 0:
            flight = keyset.refresh()
            del keyset
            flight.done.wait()
            continue
        del keyset
        wake.wait(delay)
        wake.clear()


# --- the registry: one set per URL and TLS settings, for the whole process ------------------------------

class _Registry:
    """The process's shared sets (held weakly: a set no configuration uses any more is collected)."""

    def __init__(self) -> None:
        self.sets: weakref.WeakValueDictionary[Tuple[Any, ...], RemoteKeySet] = weakref.WeakValueDictionary()
        self.lock = threading.Lock()  # may predate monkey-patching: only dict work is done under it
        self.prefetch = False         # set by enable_prefetch: new sets start fetching at once


_REGISTRY = _Registry()
# Called as observer(keyset, ok) after every fetch attempt (ops/metrics.py counts them per key set).
FETCH_OBSERVERS: List[Callable[[RemoteKeySet, bool], None]] = []


def key_set(url: Optional[str] = None, *, issuer: Optional[str] = None, client: ClientConfig) -> RemoteKeySet:
    """The shared set for ``url`` (or ``issuer``'s discovery) and ``client.tls``, created on first use.

    Fetch settings (timeout, retries) are the latest configuration's; each middleware still bounds its
    own waiting by its own timeout.
    """
    registry_key = (url, issuer, client.tls)
    with _REGISTRY.lock:
        keyset = _REGISTRY.sets.get(registry_key)
        if keyset is None:
            keyset = _REGISTRY.sets[registry_key] = RemoteKeySet(url=url, issuer=issuer, client=client)
        else:
            keyset.client = client
    if _REGISTRY.prefetch:
        keyset.start()
    return keyset


def key_sets() -> List[RemoteKeySet]:
    """Every live shared key set (for the admin endpoint: ``[s.status() for s in key_sets()]``)."""
    with _REGISTRY.lock:
        return list(_REGISTRY.sets.values())


def enable_prefetch() -> None:
    """For the serving process: fetch every key set now and every new one as its configuration loads.

    Never called by ``gatekeeper check``, which therefore stays offline.
    """
    _REGISTRY.prefetch = True
    for keyset in key_sets():
        keyset.start()


def _after_fork_in_child() -> None:
    """os.register_at_fork hook: no set of a forked child keeps its parent's threads, locks or flights."""
    _REGISTRY.lock = threading.Lock()
    for keyset in list(_REGISTRY.sets.values()):
        keyset._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def forget_all() -> None:
    """For tests: later lookups build fresh sets (sets already handed out keep working for their holders)."""
    _REGISTRY.prefetch = False
    with _REGISTRY.lock:
        _REGISTRY.sets.clear()
