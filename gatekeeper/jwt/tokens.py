"""Where a request's token is: ``tokenSource`` and ``tokenKey`` compiled to :class:`TokenPlaces`, and the
search of header, query, urlencoded form and cookie for the one token.

Every configured place is looked at: a token in two places, or twice in one (two Authorization headers,
``?jwt=a&jwt=b``, two cookies), is refused as ``ambiguous_token``. Judging one while the upstream may read
the other would let an unverified token through (docs/jwt.md, "One token per request").

    >>> places = build_token_places({"tokenKey": "jwt"})
    >>> places.find({"HTTP_AUTHORIZATION": "Bearer abc"}), places.find({"QUERY_STRING": "j%77t=xyz"})
    ('abc', 'xyz')
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import parse_qsl

from gatekeeper.errors import ConfigError
from gatekeeper.jwt.refusals import unauthorized
from gatekeeper.options import HEADER_NAME, pick, want_map, want_text
from gatekeeper.wsgi import Environ, environ_key

MAX_FORM_BYTES = 1024 * 1024
TOKEN_SOURCE_FIELDS = ("header", "headerAuthScheme", "query", "cookie")


@dataclass(frozen=True)
class TokenPlaces:
    """Where a token is looked for, in order: header, tokenKey query, tokenKey form, query, cookie."""

    header_key: str = "HTTP_AUTHORIZATION"
    scheme: Optional[str] = "bearer"          # lower-cased; None: the whole header value is the token
    token_key: Optional[str] = None
    query: Optional[str] = None
    cookie: Optional[str] = None

    def find(self, environ: Environ) -> Optional[str]:
        """The request's one token; ``ambiguous_token`` for more than one. Empty values are no token."""
        found = self._header_tokens(environ.get(self.header_key))
        unread_form = False
        if self.token_key is not None:
            form = _form_values(environ, self.token_key)
            unread_form = form is None
            found += _query_values(environ, self.token_key) + (form or [])
        if self.query is not None and self.query != self.token_key:
            found += _query_values(environ, self.query)
        if self.cookie is not None:
            found += cookie_values(environ.get("HTTP_COOKIE"), self.cookie)
        if len(found) > 1 or (found and unread_form):
            raise unauthorized("ambiguous_token")   # (a form too large or chunked may hold a second one)
        return found[0] if found else None

    def _header_tokens(self, value: Optional[str]) -> List[str]:
        """The header's token, as a list. Servers join repeated headers with "," (which no token holds),
        so a "," beside a token of our scheme means two headers, or one forged to look like two."""
        if not value:
            return []
        if "," in value:
            if any(map(self._scheme_token, value.split(","))):
                raise unauthorized("ambiguous_token")
            return []
        token = self._scheme_token(value)
        return [token] if token else []

    def _scheme_token(self, value: str) -> Optional[str]:
        if self.scheme is None:
            return value.strip() or None
        parts = value.strip().split(None, 1)
        if len(parts) != 2 or parts[0].lower() != self.scheme:
            return None  # no token, or not our scheme: counts as no token
        return parts[1].strip() or None


def build_token_places(opts: Mapping[str, Any]) -> TokenPlaces:
    """``tokenKey`` and ``tokenSource`` (canonical option names) -> :class:`TokenPlaces`."""
    token_key = want_text(opts["tokenKey"], "tokenKey") if "tokenKey" in opts else None
    source = pick(dict(want_map(opts.get("tokenSource") or {}, "tokenSource")), TOKEN_SOURCE_FIELDS, "tokenSource")
    given: Dict[str, str] = {name: want_text(value, f"tokenSource.{name}") for name, value in source.items()}
    scheme = given.get("headerAuthScheme")
    scheme = scheme.strip().lower() if scheme else None
    if "header" in given:
        header = given["header"]
        if not HEADER_NAME.match(header):
            raise ConfigError(f'tokenSource.header: "{header}" is not a header name')
        return TokenPlaces(environ_key(header), scheme, token_key, given.get("query"), given.get("cookie"))
    if scheme is not None:
        return TokenPlaces(scheme=scheme, token_key=token_key, query=given.get("query"), cookie=given.get("cookie"))
    return TokenPlaces(token_key=token_key, query=given.get("query"), cookie=given.get("cookie"))


def cookie_values(header: Optional[str], name: str) -> List[str]:
    """Every non-empty value of the cookie ``name``; a Cookie header that is not UTF-8 has no token
    (werkzeug would raise on it). Two clients' Cookie headers joined by the server count twice."""
    if not header or name not in header:  # cheap pre-check: werkzeug keeps cookie names as written
        return []
    try:
        raw = header.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return []
    from werkzeug.http import parse_cookie  # only routes with a cookie token source pay its import (~11 MiB)
    return [value for value in parse_cookie(raw).getlist(name) if value]


def _query_values(environ: Environ, name: str) -> List[str]:
    """Every non-empty value of ``name`` in the query (names percent-decoded, as upstreams read them).

    Split on "&" as Go and today's Python do; where splitting on ";" too (old Python, some frameworks)
    would find other values, the query is read two ways: ``ambiguous_token``."""
    query = environ.get("QUERY_STRING")
    if not query or not _may_name(query, name):
        return []
    values = _pairs_named(query, name)
    if ";" in query and _pairs_named(query.replace(";", "&"), name) != values:
        raise unauthorized("ambiguous_token")
    return values


@lru_cache(maxsize=64)
def _spellings(name: str) -> "re.Pattern[str]":
    """``name`` as a query may spell it: each character as itself or percent-encoded (``j%77t``), a space
    as ``+`` too. Built once per name; searching a query with it costs ~0.3 us, unquoting it ~6 us."""
    def char(c: str) -> str:
        encoded = "".join("%" + "".join(f"[{d}{d.lower()}]" if d.isalpha() else d for d in f"{b:02X}")
                          for b in c.encode("utf-8"))
        return "(?:" + "|".join([re.escape(c), encoded] + ([r"\+"] if c == " " else [])) + ")"
    return re.compile("".join(map(char, name)))


def _may_name(query: str, name: str) -> bool:
    """Cheap pre-check (most requests carry no token in the query): ``name`` appears, maybe encoded."""
    return name in query or (("%" in query or "+" in query) and _spellings(name).search(query) is not None)


def _pairs_named(text: str, name: str) -> List[str]:
    return [value for key, value in parse_qsl(text, keep_blank_values=True) if key == name and value]


def _form_values(environ: Environ, name: str) -> Optional[List[str]]:
    """Every non-empty value of a field of a urlencoded body (at most 1 MiB); the body is put back so
    the upstream gets it intact. None for a urlencoded body that is not read (chunked, or past 1 MiB): it
    may hold a token the upstream reads, so beside another token it counts as a second one."""
    media_type = (environ.get("CONTENT_TYPE") or "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        return []
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None if environ.get("HTTP_TRANSFER_ENCODING") else []
    if length == 0:
        return []
    if not 0 < length <= MAX_FORM_BYTES:
        return None
    body = _read_exactly(environ["wsgi.input"], length)
    environ["wsgi.input"] = io.BytesIO(body)
    return _pairs_named(body.decode("latin-1"), name)


def _read_exactly(stream: Any, length: int) -> bytes:
    chunks, left = [], length
    while left > 0:
        chunk = stream.read(min(left, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
