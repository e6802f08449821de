"""Traefik's replacePath, replacePathRegex and stripPrefixRegex (target and routed path changed together).

A rewrite happens after routing, so what it produces is what is forwarded and what later middlewares see
(``base.set_path`` keeps ``RAW_URI`` and ``PATH_INFO`` in step). As Traefik does, a rewritten path whose
decoded form is not clean (a ``.`` or ``..`` segment, an empty segment, as ``%2F..%2F`` decodes to) is
refused with 400: a normalising upstream would resolve it to a path the router never saw.

The regexp options are RE2 (Go's syntax, linear time); replacements are Go templates (``$1``, ``${name}``,
``$$``), parsed once by :class:`Template`.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, List, Mapping, Optional, Tuple, Union
from urllib.parse import quote, unquote

from gatekeeper.errors import ConfigError
from gatekeeper.expr.regexps import RegexpError, compile_capturing
from gatekeeper.middlewares.base import Context, Wrapper, refusal, set_path, split_target
from gatekeeper.options import pick, want_bool, want_str, want_str_list
from gatekeeper.requestpath import remove_dot_segments
from gatekeeper.wsgi import PATH_SAFE, Environ, StartResponse, WSGIApp

REPLACED_PATH = "HTTP_X_REPLACED_PATH"
FORWARDED_PREFIX = "HTTP_X_FORWARDED_PREFIX"
RAW_PATH_SAFE = PATH_SAFE + "%"  # what a raw path keeps as it is; anything else is percent-encoded
NAME_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")  # a Go group name
UNSAFE_IN_PATH = re.compile(r"[^A-Za-z0-9\-._~/!$&'()*+,;=:@%]")  # what quote() would change
BAD_ESCAPE = re.compile("%(?![0-9A-Fa-f]{2})")  # a % that starts no escape (Python re: no backtracking here)


# --- RE2 regexps and Go replacement templates, shared with redirect.py ------------------------------------

def compile_option(pattern: Any, where: str) -> Any:
    """An RE2 regexp option (trimmed, as Traefik does); ConfigError with RE2's reason."""
    text = want_str(pattern, where).strip()
    try:
        return compile_capturing(text)
    except RegexpError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


class Template:
    """A Go ``Regexp.Expand`` template, parsed once: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``.

    As in Go, a group that does not exist or did not take part expands to nothing, and a ``$`` that starts
    no reference is kept.

    >>> regexp = compile_capturing(r"^/api/(?P<version>v[0-9]+)/(.*)")
    >>> Template("/$2?v=${version}$$", regexp).expand(regexp.search(b"/api/v2/users"))
    b'/users?v=v2$'
    """

    def __init__(self, template: str, regexp: Any) -> None:
        self.parts: List[Union[bytes, int]] = []  # literal bytes, or a group number
        names = {name.decode(): number for name, number in regexp.groupindex.items()}
        text = template.encode("utf-8", "surrogatepass")
        while text:
            before, dollar, text = text.partition(b"$")
            self.parts.append(before)
            if not dollar:
                break
            if text.startswith(b"$"):
                self.parts.append(b"$")
                text = text[1:]
                continue
            found = _reference(text)
            if found is None:
                self.parts.append(b"$")
                continue
            name, text = found
            number = int(name) if name.isdigit() and len(name) < 9 else names.get(name, -1)
            self.parts.append(number if 0 <= number <= regexp.groups else b"")

    def expand(self, match: Any) -> bytes:
        out = []
        for part in self.parts:
            if isinstance(part, int):
                out.append(match.group(part) or b"")
            else:
                out.append(part)
        return b"".join(out)


def _reference(text: bytes) -> Optional[Tuple[str, bytes]]:
    """The group name after a ``$`` and the rest of the text, or None when no name follows (Go's extract)."""
    braced = text.startswith(b"{")
    start = 1 if braced else 0
    end = start
    while end < len(text) and text[end] in NAME_BYTES:
        end += 1
    if end == start or (braced and not text.startswith(b"}", end)):
        return None
    return text[start:end].decode(), text[end + 1 if braced else end:]


def replace_all(regexp: Any, text: bytes, template: Template, first: Any = None) -> bytes:
    """Go's ``ReplaceAllString``: every non-overlapping match replaced by the expanded template (``first``:
    the match at the start of the text, when the caller already searched).

    >>> regexp = compile_capturing("a*")
    >>> replace_all(regexp, b"baaac", Template("-", regexp))
    b'-b-c-'
    """
    out, last, pos = [], 0, 0
    while pos <= len(text):
        match = first if first is not None else regexp.search(text, pos)
        first = None
        if match is None:
            break
        start, end = match.span()
        out.append(text[last:start])
        if end > last or start == 0:  # an empty match right after the previous one is not replaced
            out.append(template.expand(match))
        last = end
        pos = end if end > pos else pos + 1
    out.append(text[last:])
    return b"".join(out)


# --- the path rewrites ----------------------------------------------------------------------------------

def rewritten(environ: Environ, raw_path: str, query: str) -> bool:
    """Forward ``raw_path`` (characters a path may not hold percent-encoded, a leading ``/`` ensured) if its
    escapes are well formed and its decoded form is clean; False (nothing changed) when not."""
    if UNSAFE_IN_PATH.search(raw_path):
        raw_path = quote(raw_path, safe=RAW_PATH_SAFE, encoding="latin-1", errors="replace")
    if not raw_path.startswith("/"):
        raw_path = "/" + raw_path
    if not is_clean(raw_path):
        return False
    set_path(environ, raw_path, query)
    return True


def is_clean(raw_path: str) -> bool:
    """Whether a raw path's escapes are well formed and its decoded form has no ``.``, ``..`` or empty
    segment: what a normalising upstream resolves to the path itself.

    >>> is_clean("/a%20b/c"), is_clean("/a/..%2Fb"), is_clean("/http%3A%2F%2F..%2Fx"), is_clean("/a%zz")
    (True, False, False, False)
    """
    decoded = raw_path
    if "%" in raw_path:
        if BAD_ESCAPE.search(raw_path):
            return False
        decoded = unquote(raw_path, "latin-1")
    return not (("//" in decoded or "/." in decoded) and remove_dot_segments(decoded) != decoded)


def _unclean(name: str) -> WSGIApp:
    return refusal(400, "the rewritten path has dot or empty segments", name, "bad_rewrite")


def replace_path(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's replacePath: the path becomes ``path``; the one received goes in ``X-Replaced-Path``."""
    fields = pick(options, ("path",), "replacePath")
    path = want_str(fields.get("path"), "replacePath.path")
    if not path.startswith("/") or quote(path, safe=RAW_PATH_SAFE) != path:
        raise ConfigError("replacePath.path: must start with / and be percent-encoded (no spaces, ? or #)")
    if BAD_ESCAPE.search(path):
        raise ConfigError("replacePath.path: a % must start an escape %XX")
    decoded = unquote(path, "latin-1")
    if remove_dot_segments(decoded) != decoded:
        raise ConfigError("replacePath.path: must not hold ., .. or empty segments")

    def wrap(app: WSGIApp) -> WSGIApp:
        def replaced(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            current, query = split_target(environ)
            environ[REPLACED_PATH] = current
            set_path(environ, path, query)
            return app(environ, start_response)
        return replaced
    return wrap


def replace_path_regex(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's replacePathRegex: matched against the escaped path (Traefik's ``RawPath``, else
    ``EscapedPath()``), every match replaced; the path received goes in ``X-Replaced-Path``."""
    fields = pick(options, ("regex", "replacement"), "replacePathRegex")
    regexp = compile_option(fields.get("regex"), "replacePathRegex.regex")
    replacement = want_str(fields.get("replacement", ""), "replacePathRegex.replacement", empty_ok=True).strip()
    template = Template(replacement, regexp)
    unclean = _unclean(context.name)

    def wrap(app: WSGIApp) -> WSGIApp:
        def replaced(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            current, query = split_target(environ)
            raw = current.encode("latin-1", "replace")
            match = regexp.search(raw)
            if match is None:  # nothing replaced: a client's own X-Replaced-Path must not pose as ours
                environ.pop(REPLACED_PATH, None)
                return app(environ, start_response)
            new = replace_all(regexp, raw, template, match).decode("latin-1")
            environ[REPLACED_PATH] = current
            if not rewritten(environ, new, query):
                return unclean(environ, start_response)
            return app(environ, start_response)
        return replaced
    return wrap


def strip_prefix(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's stripPrefix: the first prefix the raw path starts with is removed and sent as
    ``X-Forwarded-Prefix``. What is left goes through :func:`rewritten` like every rewrite: a router on
    ``PathPrefix(`/pub`)`` stripping ``/pub`` would otherwise forward ``/pub./admin/x`` as ``/./admin/x``
    (and ``/pub../admin/x`` as ``/../admin/x``), which a normalising upstream serves as ``/admin/x``."""
    fields = pick(options, ("prefixes", "forceSlash"), "stripPrefix")
    prefixes = want_str_list(fields.get("prefixes", []), "stripPrefix.prefixes")
    if not prefixes:
        raise ConfigError("stripPrefix.prefixes: at least one prefix is required")
    want_bool(fields.get("forceSlash", True), "stripPrefix.forceSlash")  # deprecated in Traefik; accepted
    unclean = _unclean(context.name)

    def wrap(app: WSGIApp) -> WSGIApp:
        def stripped(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            path, query = split_target(environ)
            prefix = next((p for p in prefixes if path.startswith(p)), None)
            if prefix is not None:
                environ[FORWARDED_PREFIX] = prefix
                if not rewritten(environ, path[len(prefix):], query):
                    return unclean(environ, start_response)
            return app(environ, start_response)
        return stripped
    return wrap


def strip_prefix_regex(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's stripPrefixRegex: the first regexp whose match starts the decoded path removes it; the
    removed prefix goes in ``X-Forwarded-Prefix``."""
    fields = pick(options, ("regex",), "stripPrefixRegex")
    where = "stripPrefixRegex.regex"
    patterns = want_str_list(fields.get("regex", []), where)
    if not patterns:
        raise ConfigError(f"{where}: at least one regexp is required")
    regexps = [compile_option(p, f"{where}[{i}]") for i, p in enumerate(patterns)]
    unclean = _unclean(context.name)

    def wrap(app: WSGIApp) -> WSGIApp:
        def stripped(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            decoded = environ.get("PATH_INFO", "").encode("latin-1", "replace")
            for regexp in regexps:
                match = regexp.search(decoded)
                if match is None or match.end() == match.start():
                    continue
                prefix = match.group(0)
                if not decoded.startswith(prefix):
                    continue
                current, query = split_target(environ)
                environ[FORWARDED_PREFIX] = header_safe(prefix.decode("latin-1"))
                if not rewritten(environ, current[encoded_length(current, len(prefix)):], query):
                    return unclean(environ, start_response)
                break
            return app(environ, start_response)
        return stripped
    return wrap


def encoded_length(raw_path: str, decoded_length: int) -> int:
    """How many characters of ``raw_path`` spell its first ``decoded_length`` decoded bytes.

    >>> encoded_length("/a%20b/c", 4)
    6
    """
    i = decoded = 0
    while i < len(raw_path) and decoded < decoded_length:
        i += 3 if raw_path[i] == "%" and i + 2 < len(raw_path) else 1
        decoded += 1
    return i


def header_safe(value: str) -> str:
    """A decoded path piece as a header value: control characters (``%0D%0A`` decoded) percent-encoded.

    >>> header_safe("/a\\r\\nX-Evil: 1")
    '/a%0D%0AX-Evil: 1'
    """
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else quote(c, safe="", encoding="latin-1") for c in value)
