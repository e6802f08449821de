"""Traefik's basicAuth: htpasswd users (bcrypt, apr1 MD5, SHA1) from ``users`` and ``usersFile``.

A request goes on only with ``Authorization: Basic`` naming a known user and the right password; anything
else is answered 401 with ``WWW-Authenticate: Basic realm="..."``. On success the user's name goes in the
access log and, with ``headerField``, in that request header (the client's own copy of it is always removed
first, so it cannot be spoofed); ``removeHeader: true`` drops ``Authorization`` before forwarding.

Password checks (htpasswd.py) are the costly part: bcrypt takes tens of milliseconds on purpose. So

- bcrypt runs in a small thread pool of its own (the ``bcrypt`` package releases the GIL), and so does apr1
  (Python holding the GIL, but the event loop takes it back every switch interval): the event loop
  keeps serving while a check runs, and gevent's shared pool (DNS lookups) is not crowded; at most
  :data:`MAX_WAITING` checks wait at once, more are answered 503;
- a successful check is remembered for :data:`CACHE_SECONDS` (at most :data:`CACHE_SIZE` entries) under an
  HMAC of user, password and hash with a per-process random key: the cache holds no password, and a changed
  hash never matches an old entry;
- a password longer than :data:`MAX_PASSWORD_BYTES` (bcrypt: 72) is refused without hashing;
- a failed check costs what the costliest hash listed costs: an unknown user is checked against that hash,
  and a wrong password for a user with a cheaper one (SHA1 next to bcrypt) is followed by that check, so
  timing does not tell which names exist.

``usersFile`` is read when the middleware is built, then looked at again (``stat``) at most once a second
as requests come: an edit is picked up whether the file is in conf.d or not; an edit that breaks it keeps
the last good users serving and logs the problem (file and line, never a hash).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context, Wrapper, refusal
from gatekeeper.middlewares.htpasswd import BCRYPT_MAX_BYTES, User, parse_line, verify
from gatekeeper.options import HEADER_NAME, pick, want_bool, want_str, want_str_list
from gatekeeper.wsgi import USER, Environ, StartResponse, WSGIApp, environ_key

log = logging.getLogger("gatekeeper.middlewares")

OPTIONS = ("users", "usersFile", "realm", "removeHeader", "headerField")
MAX_PASSWORD_BYTES = 1024
MAX_HEADER_CHARS = 4096
CACHE_SECONDS = 60.0
CACHE_SIZE = 1024
MAX_WAITING = 64
POOL_THREADS = 2
FILE_CHECK_SECONDS = 1.0
COST = {"sha": 0, "apr1": 1, "bcrypt": 2}  # User.kind by what a check costs (SHA1 us, apr1 ms, bcrypt 100 ms)


def basic_auth(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's basicAuth: ``users``, ``usersFile`` (its lines win), ``realm`` (``traefik``),
    ``removeHeader`` (false), ``headerField``."""
    fields = pick(options, OPTIONS, "basicAuth")
    inline = read_users(want_str_list(fields.get("users") or [], "basicAuth.users"), "basicAuth.users")
    users_file = None
    if fields.get("usersFile"):
        users_file = UsersFile(resolve(want_str(fields["usersFile"], "basicAuth.usersFile"), context), inline)
    elif not inline:
        raise ConfigError("basicAuth: users or usersFile is required")
    realm = want_str(fields.get("realm") or "traefik", "basicAuth.realm")
    if any(c in realm for c in '"\\\r\n\0'):
        raise ConfigError('basicAuth.realm: must not hold ", \\ or a line break')
    header = want_str(fields["headerField"], "basicAuth.headerField") if fields.get("headerField") else None
    if header is not None and not HEADER_NAME.match(header):
        raise ConfigError(f"basicAuth.headerField: {header!r} is not a header name")
    checker = Checker(users_file.current if users_file else (lambda: inline))
    return Gate(context.name, checker, realm, want_bool(fields.get("removeHeader", False), "basicAuth.removeHeader"),
                environ_key(header) if header else None).wrap


def read_users(lines: List[str], where: str) -> Dict[str, User]:
    """``name:hash`` lines (one per entry; a single string may hold several, comma-separated, as Traefik's
    labels write them) by name; a later line for the same name wins."""
    users: Dict[str, User] = {}
    for i, entry in enumerate(lines):
        for line in entry.split(",") if len(lines) == 1 else [entry]:
            user = parse_line(line, f"{where}[{i}]")
            users[user.name] = user
    return users


def resolve(path: str, context: Context) -> Path:
    """A ``usersFile`` path: absolute, or relative to the directory of the manifest that names it."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    return Path(context.root or ".") / Path(context.manifest or "x").parent / candidate


def read_file(path: Path) -> Dict[str, User]:
    """The users of an htpasswd file: one ``name:hash`` per line, blank and ``#`` lines skipped."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else (exc.strerror or "cannot be read")
        raise ConfigError(f"basicAuth.usersFile: {path}: {reason}") from None
    users: Dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            user = parse_line(line, f"basicAuth.usersFile: {path}: line {number}")
            users[user.name] = user
    if not users:
        raise ConfigError(f"basicAuth.usersFile: {path}: no users")
    return users


class UsersFile:
    """The users of ``usersFile`` over the inline ones (Traefik: the file's lines win), read again when the
    file changes (looked at no more than once per :data:`FILE_CHECK_SECONDS`)."""

    def __init__(self, path: Path, inline: Dict[str, User]) -> None:
        self.path, self.inline = path, inline
        self.signature = self.stat()
        self.users = {**inline, **read_file(path)}
        self.next_check = time.monotonic() + FILE_CHECK_SECONDS

    def stat(self) -> Optional[Tuple[int, int, int]]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def current(self) -> Dict[str, User]:
        now = time.monotonic()
        if now >= self.next_check:
            self.next_check = now + FILE_CHECK_SECONDS
            signature = self.stat()
            if signature != self.signature:
                self.signature = signature
                try:
                    self.users = {**self.inline, **read_file(self.path)}
                    log.info("basicAuth: %s read again (%d users)", self.path, len(self.users))
                except ConfigError as err:
                    log.error("%s (the users read before keep serving)", err)
        return self.users


class Checker:
    """Password checks: remembered when they succeed, bcrypt off the event loop, bounded waiting."""

    def __init__(self, users: Callable[[], Dict[str, User]]) -> None:
        self.users = users
        self.key = os.urandom(32)
        self.passed: Dict[bytes, float] = {}   # HMAC(user, password, hash) -> when it stops counting
        self.waiting = 0
        self.decoy_of: Optional[Dict[str, User]] = None
        self.decoy_user = User("", "", "sha")

    def check(self, name: str, password: bytes) -> Optional[bool]:
        """True or False; None when too many bcrypt checks already wait (the caller answers 503)."""
        users = self.users()
        user = users.get(name)
        decoy = self.decoy(users)
        hashed = user.hashed if user else decoy.hashed  # an unknown name: the costliest hash, never True
        user_bytes = name.encode()
        material = b"%d:%s%d:%s%s" % (len(user_bytes), user_bytes, len(password), password, hashed.encode())
        key = hmac.new(self.key, material, hashlib.sha256).digest()  # lengths first: no two inputs alike
        now = time.monotonic()
        if user is not None and self.passed.get(key, 0.0) > now:
            return True
        ok = self.run(password, hashed)
        if ok and user is not None:
            self.remember(key, now)
            return True
        if ok is None:
            return None
        # a cheap hash's failure padded to the costliest's: timing tells no name (nor its hash's kind)
        padded = user is not None and COST[user.kind] < COST[decoy.kind]
        return None if padded and self.run(password, decoy.hashed) is None else False

    def run(self, password: bytes, hashed: str) -> Optional[bool]:
        """One hash check: bcrypt and apr1 (a thousand MD5 rounds in Python, ~2 ms) in the pool, where the
        event loop still gets the GIL every switch interval (None when too many wait); SHA1 here."""
        if len(password) > (BCRYPT_MAX_BYTES if hashed.startswith("$2") else MAX_PASSWORD_BYTES):
            return False
        if hashed.startswith("{SHA}"):
            return verify(password, hashed)
        if self.waiting >= MAX_WAITING:
            return None
        self.waiting += 1
        try:
            return bool(pool().apply(verify, (password, hashed)))
        finally:
            self.waiting -= 1

    def decoy(self, users: Dict[str, User]) -> User:
        """The user whose hash costs most to check (bcrypt, then apr1, then SHA1), found once per users map."""
        if self.decoy_of is not users:
            self.decoy_of, self.decoy_user = users, max(users.values(), key=lambda user: COST[user.kind])
        return self.decoy_user

    def remember(self, key: bytes, now: float) -> None:
        if len(self.passed) >= CACHE_SIZE:
            for old in [k for k, until in self.passed.items() if until <= now] or list(self.passed)[:CACHE_SIZE // 4]:
                del self.passed[old]
        self.passed[key] = now + CACHE_SECONDS


_POOL: List[Any] = []  # [pid, ThreadPool]: made per process (a pool's threads do not survive a fork)


def pool() -> Any:
    """The bcrypt thread pool of this process, made on first use."""
    if not _POOL or _POOL[0] != os.getpid():
        from gevent.threadpool import ThreadPool

        _POOL[:] = [os.getpid(), ThreadPool(POOL_THREADS)]
    return _POOL[1]


def credentials(environ: Environ) -> Optional[Tuple[str, bytes]]:
    """(user, password) of an ``Authorization: Basic`` header; None when there is none or it is malformed.

    >>> credentials({"HTTP_AUTHORIZATION": "basic dGVzdDp0ZXN0"})
    ('test', b'test')
    >>> credentials({"HTTP_AUTHORIZATION": "Bearer x"}) is None
    True
    """
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or len(header) > MAX_HEADER_CHARS:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    name, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return name.decode("utf-8", "replace"), password


class Gate:
    """The middleware itself: one per definition."""

    def __init__(self, name: str, checker: Checker, realm: str, remove_header: bool, header: Optional[str]) -> None:
        self.name, self.checker, self.remove_header, self.header = name, checker, remove_header, header
        self.unauthorized = refusal(401, "", name, "unauthorized", [("WWW-Authenticate", f'Basic realm="{realm}"')])
        self.busy = refusal(503, "too many password checks in progress", name, "auth_busy", [("Retry-After", "1")])

    def wrap(self, app: WSGIApp) -> WSGIApp:
        def basic_auth(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            if self.header:
                environ.pop(self.header, None)  # the client's own copy never reaches the service
            found = credentials(environ)
            verdict = self.checker.check(*found) if found else False
            if verdict is None:
                return self.busy(environ, start_response)
            if not verdict or found is None:
                return self.unauthorized(environ, start_response)
            environ.setdefault(USER, found[0])
            if self.header:  # WSGI header values are bytes spelled as latin-1
                environ[self.header] = found[0].encode("utf-8").decode("latin-1")
            if self.remove_header:
                environ.pop("HTTP_AUTHORIZATION", None)
            return app(environ, start_response)
        return basic_auth

