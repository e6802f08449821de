"""Remote key sets: ``jwksUrl`` and ``trustedIssuers`` (with OpenID discovery), cached and refreshed.

A :class:`RemoteKeySet` holds the keys published at one URL (or found through one issuer's discovery
document). It is shared by every middleware naming the same URL with the same TLS settings, through a
module registry that outlives configuration reloads (:func:`key_sets` lists the live ones for the admin
endpoint). The rules, from spec/jwt.md "Remote key sets":

- Fetching happens off the request path with ``requests``; the set is kept for the response's
  ``Cache-Control: max-age`` / ``Expires`` clamped to [``MIN_TTL``, ``MAX_TTL``] (``DEFAULT_TTL`` when
  absent) and a background refresher fetches again before that runs out.
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
Redirects are followed (at most ``MAX_REDIRECTS``) but never from https to http.

    >>> source = remote_source({"jwksUrl": "https://idp.example/keys"})
    >>> source.keyset.status()["fetches"]
    0
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urljoin, urlsplit

from gatekeeper import jsontext
from gatekeeper.config.providers.fields import pick
from gatekeeper.errors import ConfigError
from gatekeeper.jwt.jws import ASYMMETRIC_ALGS, ParsedToken, Verifier
from gatekeeper.jwt.keys import KeyIndex, KeySource, read_jwk_set, refuse

log = logging.getLogger("gatekeeper.jwks")

# Timings. Module constants read at call time, so tests can shrink them; these values are the spec's.
MIN_TTL = 30.0                 # cache lifetime bounds (seconds)
MAX_TTL = 3600.0
DEFAULT_TTL = 300.0            # no Cache-Control max-age, no Expires
REFRESH_AHEAD = 0.1            # the refresher fetches when this fraction of the lifetime is left
UNKNOWN_KID_INTERVAL = 10.0    # at most one request-triggered refresh per this many seconds, per set
RETRY_BACKOFF = 0.5            # first retry delay within a refresh, doubled each retry ...
MAX_BACKOFF = 8.0              # ... up to this
FAILURE_RETRY = 30.0           # after a refresh failed (retries included), the next background attempt
MAX_DOCUMENT_BYTES = 1 << 20

DISCOVERY_PATH = "/.well-known/openid-configuration"


# --- configuration -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TLSConfig:
    """``clientConfig.tls``: each of ca/cert/key is a file path or the PEM text itself."""

    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class ClientConfig:
    """``clientConfig``: how key sets and discovery documents are fetched."""

    timeout: float = 5.0
    max_retries: int = 3
    tls: TLSConfig = field(default_factory=TLSConfig)


def _number(where: str, value: Any, *, whole: bool, minimum: float) -> Any:
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        value = float(value) if "." in value else int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
        raise ConfigError(f"{where}: expected a {'whole ' if whole else ''}number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{where}: must be at least {minimum:g}")
    return value


def _pem_option(where: str, value: Any) -> Optional[str]:
    """A PEM given inline, or the path of a readable file (checked now: the check needs no network)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a file path or PEM text")
    if "-----BEGIN " in value:
        return value.strip() + "\n"
    if not os.path.isfile(value):
        raise ConfigError(f"{where}: no such file {value}")
    return value


def parse_tls(value: Any) -> TLSConfig:
    fields = pick(value, ("ca", "cert", "key", "insecureSkipVerify"), "clientConfig.tls")
    skip = fields.get("insecureSkipVerify", False)
    if isinstance(skip, str) and skip.strip().lower() in ("true", "false"):
        skip = skip.strip().lower() == "true"
    if not isinstance(skip, bool):
        raise ConfigError(f"clientConfig.tls.insecureSkipVerify: expected true or false, got {skip!r}")
    tls = TLSConfig(*(_pem_option(f"clientConfig.tls.{name}", fields.get(name)) for name in ("ca", "cert", "key")),
                    insecure_skip_verify=skip)
    if tls.key and not tls.cert:
        raise ConfigError("clientConfig.tls.key: given without clientConfig.tls.cert")
    return tls


def parse_client_config(value: Any) -> ClientConfig:
    """``clientConfig`` -> :class:`ClientConfig`; problems are ConfigErrors naming the field."""
    fields = pick(value, ("timeoutSeconds", "maxRetries", "tls"), "clientConfig")
    return ClientConfig(
        timeout=_number("clientConfig.timeoutSeconds", fields.get("timeoutSeconds", 5), whole=False, minimum=0.001),
        max_retries=_number("clientConfig.maxRetries", fields.get("maxRetries", 3), whole=True, minimum=0),
        tls=parse_tls(fields.get("tls")),
    )


_MATERIALISED: Dict[str, str] = {}


def _pem_path(value: Optional[str]) -> Optional[str]:
    """requests wants files: inline PEM is written to a private temp file once, at the first fetch."""
    if value is None or "-----BEGIN " not in value:
        return value
    path = _MATERIALISED.get(value)
    if path is None:
        handle, path = tempfile.mkstemp(prefix="gatekeeper-tls-", suffix=".pem")
        with os.fdopen(handle, "w") as out:
            out.write(value)
        atexit.register(os.unlink, path)
        _MATERIALISED[value] = path
    return path


def _tls_arguments(tls: TLSConfig) -> Dict[str, Any]:
    verify: Any = False if tls.insecure_skip_verify else (_pem_path(tls.ca) or True)
    cert: Any = None
    if tls.cert:
        cert = (_pem_path(tls.cert), _pem_path(tls.key)) if tls.key else _pem_path(tls.cert)
    return {"verify": verify, "cert": cert}


# --- fetching ------------------------------------------------------------------------------------------

class FetchError(Exception):
    """A key set or discovery document could not be had; the message says why, for logs and status."""


def cache_lifetime(headers: Mapping[str, str], now: Optional[float] = None) -> float:
    """Seconds to keep a response: max-age, else Expires - Date, else DEFAULT_TTL; clamped to the bounds."""
    directives = {}
    for part in headers.get("Cache-Control", "").split(","):
        name, _, value = part.partition("=")
        directives[name.strip().lower()] = value.strip().strip('"')
    seconds: float = DEFAULT_TTL
    if "no-store" in directives or "no-cache" in directives:
        seconds = 0
    elif directives.get("max-age", "").isdigit():
        seconds = int(directives["max-age"])
    elif "Expires" in headers:
        seconds = _expires_in(headers, time.time() if now is None else now)
    return min(max(seconds, MIN_TTL), MAX_TTL)


def _expires_in(headers: Mapping[str, str], now: float) -> float:
    """Expires relative to the response's Date (clock skew between us and the server cancels out)."""
    try:
        expires = parsedate_to_datetime(headers["Expires"]).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0  # an invalid Expires means "already expired" (RFC 9111 5.3)
    try:
        date = parsedate_to_datetime(headers["Date"]).timestamp() if "Date" in headers else now
    except (TypeError, ValueError, IndexError):
        date = now
    return expires - date


def _describe(exc: "requests.RequestException") -> str:
    import requests
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS error: {exc}"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return type(exc).__name__


REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5


def redirect_target(url: str, location: Optional[str]) -> str:
    """Where a redirect from ``url`` leads; FetchError for none, a non-http(s) one or https -> http.

    A key set fetched over https must never be read from plain http: whoever can redirect the fetch (or
    answer it, once downgraded) could then publish their own keys.
    """
    if not location:
        raise FetchError(f"{url}: redirect without a Location")
    target = urljoin(url, location.strip())
    scheme = urlsplit(target).scheme
    if scheme not in ("http", "https") or not is_http_url(target):
        raise FetchError(f"{url}: redirect to a non-http(s) URL refused")
    if scheme == "http" and urlsplit(url).scheme == "https":
        raise FetchError(f"{url}: redirect from https to http refused ({safe_url(target)})")
    return target


def safe_url(url: str) -> str:
    """A URL for a message or a metric label: no userinfo, query or fragment (any could carry a credential)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{':%d' % parts.port if parts.port else ''}{parts.path}"


def get_json(session: requests.Session, url: str, client: ClientConfig) -> Tuple[Any, float]:
    """GET ``url``: its JSON document (strict: no duplicate names) and cache lifetime, else FetchError.

    Redirects are followed by hand (at most ``MAX_REDIRECTS``), so a downgrade to http is refused
    (:func:`redirect_target`).
    """
    import requests
    first = url
    try:
        for _ in range(MAX_REDIRECTS + 1):
            # Connection: close: fetches are minutes apart, and a pooled connection gone stale meanwhile
            # would only turn into a spurious failure.
            with session.get(url, timeout=client.timeout, stream=True, allow_redirects=False,
                             headers={"Accept": "application/json", "Connection": "close"},
                             **_tls_arguments(client.tls)) as response:
                if response.status_code in REDIRECT_STATUSES:
                    url = redirect_target(url, response.headers.get("Location"))
                    continue
                if response.status_code != 200:
                    raise FetchError(f"{url}: HTTP {response.status_code}")
                body = response.raw.read(MAX_DOCUMENT_BYTES + 1, decode_content=True)
                headers = response.headers
                break
        else:
            raise FetchError(f"{first}: more than {MAX_REDIRECTS} redirects")
    except requests.RequestException as exc:
        raise FetchError(f"{url}: {_describe(exc)}") from None
    except OSError as exc:  # urllib3 may surface socket errors raw while reading the body
        raise FetchError(f"{url}: {exc}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise FetchError(f"{url}: larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return jsontext.loads(body), cache_lifetime(headers)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FetchError(f"{url}: not valid JSON ({exc})") from None


def discover_jwks_uri(session: requests.Session, issuer: str, client: ClientConfig) -> str:
    """OpenID discovery: ``jwks_uri`` of ``ISSUER/.well-known/openid-configuration``, whose ``issuer``
    must be exactly the configured one (else anyone serving that path could name any key set)."""
    document, _ = get_json(session, issuer.rstrip("/") + DISCOVERY_PATH, client)
    if not isinstance(document, dict):
        raise FetchError(f"{issuer}: the discovery document is not a JSON object")
    if document.get("issuer") != issuer:
        raise FetchError(f"{issuer}: the discovery document names issuer {document.get('issuer')!r}")
    uri = document.get("jwks_uri")
    if not isinstance(uri, str) or not is_http_url(uri):
        raise FetchError(f"{issuer}: the discovery document has no http(s) jwks_uri")
    return uri


def is_http_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


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
        self.name = url or (issuer or "").rstrip("/") + DISCOVERY_PATH
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
                raise refuse("no_keys")
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
            raise FetchError(f"{self._jwks_uri}: {exc.reason.split(': ', 1)[-1]}") from None
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
            "jwks_uri": self._jwks_uri,
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

_REGISTRY: "weakref.WeakValueDictionary[Tuple[Any, ...], RemoteKeySet]" = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.Lock()  # may predate monkey-patching: only dict work is done under it
_PREFETCH = False
# Called as observer(keyset, ok) after every fetch attempt (metrics.py counts them per key set).
FETCH_OBSERVERS: List[Callable[[RemoteKeySet, bool], None]] = []


def key_set(url: Optional[str] = None, *, issuer: Optional[str] = None, client: ClientConfig) -> RemoteKeySet:
    """The shared set for ``url`` (or ``issuer``'s discovery) and ``client.tls``, created on first use.

    Fetch settings (timeout, retries) are the latest configuration's; each middleware still bounds its
    own waiting by its own timeout.
    """
    registry_key = (url, issuer, client.tls)
    with _REGISTRY_LOCK:
        keyset = _REGISTRY.get(registry_key)
        if keyset is None:
            keyset = _REGISTRY[registry_key] = RemoteKeySet(url=url, issuer=issuer, client=client)
        else:
            keyset.client = client
    if _PREFETCH:
        keyset.start()
    return keyset


def key_sets() -> List[RemoteKeySet]:
    """Every live shared key set (for the admin endpoint: ``[s.status() for s in key_sets()]``)."""
    with _REGISTRY_LOCK:
        return list(_REGISTRY.values())


def enable_prefetch() -> None:
    """For the serving process: fetch every key set now and every new one as its configuration loads.

    Never called by ``gatekeeper check``, which therefore stays offline.
    """
    global _PREFETCH
    _PREFETCH = True
    for keyset in key_sets():
        keyset.start()


def _after_fork_in_child() -> None:
    """os.register_at_fork hook: no set of a forked child keeps its parent's threads, locks or flights."""
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    for keyset in list(_REGISTRY.values()):
        keyset._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def forget_all() -> None:
    """For tests: later lookups build fresh sets (sets already handed out keep working for their holders)."""
    global _PREFETCH
    _PREFETCH = False
    with _REGISTRY_LOCK:
        _REGISTRY.clear()


# --- key sources -------------------------------------------------------------------------------------------

class RemoteSource(KeySource):
    """``jwksUrl``: one shared :class:`RemoteKeySet`; a request waits at most ``wait`` seconds for it."""

    option = "jwksUrl"

    def __init__(self, keyset: RemoteKeySet, wait: float) -> None:
        self.keyset = keyset
        self.wait = wait
        self.allowed_algs = frozenset(ASYMMETRIC_ALGS)  # the set's keys narrow it per token

    def candidates(self, alg: str, kid: Optional[str]) -> Sequence[Verifier]:
        return self.keyset.candidates(alg, kid, self.wait)


@dataclass(frozen=True)
class TrustedIssuer:
    """One ``trustedIssuers`` entry, built: its key source and the audiences it accepts (empty: any)."""

    issuer: str
    source: RemoteSource
    audiences: FrozenSet[str]


def token_audiences(payload: Mapping[str, Any]) -> Tuple[str, ...]:
    """``aud`` as a tuple of strings (a JSON number is not a string, though JSONNumber subclasses str)."""
    aud = payload.get("aud")
    if type(aud) is str:
        return (aud,)
    if isinstance(aud, list):
        return tuple(item for item in aud if type(item) is str)
    return ()


class IssuerSource(KeySource):
    """``trustedIssuers``: the token's ``iss`` (exact match) picks the issuer, its key set and audiences.

    ``audience`` is any-of, as Envoy's ``audiences``: the token's ``aud`` must hold at least one of them
    (KrakenD and Oathkeeper require all of them).
    """

    option = "trustedIssuers"

    def __init__(self, issuers: Sequence[TrustedIssuer]) -> None:
        self.issuers = {entry.issuer: entry for entry in issuers}
        self.allowed_algs = frozenset(ASYMMETRIC_ALGS)

    def issuer_of(self, payload: Mapping[str, Any]) -> TrustedIssuer:
        iss = payload.get("iss")
        found = self.issuers.get(iss) if type(iss) is str else None
        if found is None:
            raise refuse("untrusted_issuer")
        return found

    def candidates(self, alg: str, kid: Optional[str]) -> Sequence[Verifier]:
        raise refuse("untrusted_issuer")  # keys depend on the token's iss: see candidates_for

    def candidates_for(self, token: ParsedToken) -> Sequence[Verifier]:
        return self.issuer_of(token.payload).source.candidates(token.alg, token.kid)

    def check_payload(self, payload: Mapping[str, Any]) -> None:
        wanted = self.issuer_of(payload).audiences
        if wanted and wanted.isdisjoint(token_audiences(payload)):
            raise refuse("bad_audience")


# --- options -> source -------------------------------------------------------------------------------------

def _url_option(where: str, value: Any, *, path_allowed: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a URL")
    value = value.strip()
    if value.startswith("/"):
        if not path_allowed:
            raise ConfigError(f"{where}: a path (resolved against the token's issuer) is accepted only with "
                              "trustedIssuers, which says which issuers to trust")
        return value
    if not is_http_url(value):
        raise ConfigError(f"{where}: expected an http or https URL, got {value!r}")
    return value


def _audiences(where: str, value: Any) -> FrozenSet[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise ConfigError(f"{where}: expected a string or a list of strings")
    return frozenset(items)


def _trusted_issuer(where: str, entry: Any, default_url: Optional[str], client: ClientConfig) -> TrustedIssuer:
    fields = pick(entry, ("issuer", "jwksUrl", "audience"), where)
    issuer = fields.get("issuer")
    if not isinstance(issuer, str) or not issuer.strip():
        raise ConfigError(f"{where}.issuer: expected the issuer's URL (the tokens' iss)")
    url = _url_option(f"{where}.jwksUrl", fields["jwksUrl"], path_allowed=True) if "jwksUrl" in fields \
        else default_url
    if (url is None or url.startswith("/")) and not is_http_url(issuer):
        raise ConfigError(f"{where}.issuer: {issuer!r} is not an http(s) URL, so its keys cannot be found "
                          "from it: give jwksUrl")
    if url is None:
        keyset = key_set(issuer=issuer, client=client)
    else:
        keyset = key_set(issuer.rstrip("/") + url if url.startswith("/") else url, client=client)
    audiences = _audiences(f"{where}.audience", fields["audience"]) if "audience" in fields else frozenset()
    return TrustedIssuer(issuer, RemoteSource(keyset, client.timeout), audiences)


def remote_source(opts: Mapping[str, Any]) -> KeySource:
    """The source for ``jwksUrl`` and/or ``trustedIssuers`` (canonical option names); no network here.

    With ``trustedIssuers``, a top-level ``jwksUrl`` is the default for issuers that give none: a URL is
    used as is, a path is appended to each issuer.
    """
    client = parse_client_config(opts.get("clientConfig"))
    trusted = opts.get("trustedIssuers")
    if trusted is None:
        url = _url_option("jwksUrl", opts["jwksUrl"], path_allowed=False)
        return RemoteSource(key_set(url, client=client), client.timeout)
    if not isinstance(trusted, list) or not trusted:
        raise ConfigError("trustedIssuers: expected a list of {issuer, jwksUrl?, audience?}")
    default_url = _url_option("jwksUrl", opts["jwksUrl"], path_allowed=True) if "jwksUrl" in opts else None
    issuers = [_trusted_issuer(f"trustedIssuers[{n}]", entry, default_url, client) for n, entry in enumerate(trusted)]
    names = [entry.issuer for entry in issuers]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"trustedIssuers: issuer {name!r} is listed twice")
    return IssuerSource(issuers)
