"""The one option-validation toolkit: case-insensitive names, types, durations, PEM and Secret references.

Manifests (``config/providers``), the JWT middleware's options (``jwt/``) and the admin view all read
user-written mappings. They share these helpers so a name is matched, a type checked and a problem worded
the same way everywhere: every error is a ``ConfigError`` that starts with the option's path
(``clientConfig.tls.ca: no such file /etc/ca.pem``) and, when the mapping came from a manifest, knows its
line. Values are echoed in messages by their type (``got a string``), since an option may hold a secret;
only numbers and booleans are shown as written (``got -1``), and URLs without userinfo or query (:func:`safe_url`).

    >>> pick({"Rule": "Path(`/`)", "service": "web"}, ("rule", "service"), "http.routers.api")
    {'rule': 'Path(`/`)', 'service': 'web'}
    >>> want_int("8080", "port", minimum=1)
    8080
    >>> want_bool(" True ", "insecureSkipVerify")
    True

It imports nothing of the package but ``errors``, so every wing may use it.
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

from gatekeeper.errors import ConfigError

SECRET_URN_PREFIX = "urn:k8s:secret:"  # a Kubernetes Secret reference the provider resolves (docs/kubernetes.md)
PEM_MARKER = "-----BEGIN "
HEADER_NAME = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]+\Z")  # an HTTP field name: RFC 9110's token

_SIGNED_NUMBER = re.compile(r"\s*-?\d+(\.\d+)?\s*")
NOT_A_URL = "(unreadable URL, not shown)"  # what safe_url shows of text it cannot show safely
_TYPE_NAMES = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}

Number = Union[int, float]


# --- where: lines and type names for messages ------------------------------------------------------------

def line_of(value: Any, key: Any = None) -> Optional[int]:
    """The line a manifest mapping (or one of its keys) is on, when the loader recorded it.

    Manifest mappings (``config.manifests.Mapping``) carry ``line`` and ``line_of``; plain dicts do not.

    >>> line_of({"a": 1}) is None
    True
    """
    if isinstance(value, dict) and hasattr(value, "line_of"):
        return value.line_of(key) if key is not None else getattr(value, "line", None)
    return None


def type_name(value: Any) -> str:
    """What a value is, for a message that must not echo it (it may be a secret).

    >>> type_name(None), type_name({}), type_name("s3cret"), type_name(True)
    ('nothing', 'a mapping', 'a string', 'a boolean')
    """
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def safe_url(url: str) -> str:
    """A URL for a message, a log line or a metric label: scheme, host, port and path only, since userinfo,
    query and fragment could each carry a credential. Text that is not a URL with a host (or has a port that
    is not a number, as ``http://user:pa/ss@host`` has) is not shown at all: it could be a credential cut
    anywhere.

    >>> safe_url("https://user:pw@idp.example:8443/keys?api_key=x#f")
    'https://idp.example:8443/keys'
    >>> safe_url("http://[::1]:9000"), safe_url("user:pw@host"), safe_url("http://u:p/w@host")
    ('http://[::1]:9000', '(unreadable URL, not shown)', '(unreadable URL, not shown)')
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # an unclosed "[", or a port that is not a number
        return NOT_A_URL
    if not parts.hostname:
        return NOT_A_URL
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    path = "" if "@" in parts.path else parts.path  # "@" in a path: likely userinfo with a raw "/" in it
    return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{path}"


def _got(value: Any) -> str:
    """A number or boolean as written, anything else by its type name."""
    return repr(value) if isinstance(value, (bool, int, float)) else type_name(value)


def _figure(number: Number) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


# --- names: matched case-insensitively, as Traefik does ---------------------------------------------------

def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``; did you mean "X"?`` for the known name closest to a misspelt one (case-insensitive), else ``""``.

    A typo is the commonest configuration mistake; naming the intended field saves a trip to the docs.

    >>> did_you_mean("signingSecrt", ("signingSecret", "publicKey"))
    '; did you mean "signingSecret"?'
    >>> did_you_mean("colour", ("rule", "service"))
    ''
    """
    by_lower = {str(k).lower(): str(k) for k in known}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
    return f'; did you mean "{by_lower[close[0]]}"?' if close else ""


_CANONICAL: Dict[Tuple[str, ...], Dict[str, str]] = {}
CANONICAL_CACHE_SIZE = 256


def canonical_names(allowed: Tuple[str, ...]) -> Dict[str, str]:
    """``{lower-case name: name}`` of ``allowed``, made once per tuple: :func:`pick` runs for every router,
    service and option block of a conf.d (40,000 times for 10,000 tenants), always with one of a few tuples.

    >>> canonical_names(("rule", "entryPoints"))
    {'rule': 'rule', 'entrypoints': 'entryPoints'}
    """
    found = _CANONICAL.get(allowed)
    if found is None:
        found = {name.lower(): name for name in allowed}
        if len(_CANONICAL) < CANONICAL_CACHE_SIZE:
            _CANONICAL[allowed] = found
    return found


def pick(obj: Any, allowed: Iterable[str], where: str) -> Dict[str, Any]:
    """Fields of a mapping keyed by their canonical name, matching names case-insensitively like Traefik.

    ``None`` is an empty mapping. Unknown names and a name given twice (in two spellings) are errors
    naming the path and, for a manifest, the field's own line: ``http.routers.api: unknown field "rul";
    did you mean "rule"?``.

    >>> pick({"RULE": "x"}, ("rule",), "router")
    {'rule': 'x'}
    >>> pick({"rul": "x"}, ("rule",), "router")
    Traceback (most recent call last):
    gatekeeper.errors.ConfigError: router: unknown field "rul"; did you mean "rule"?
    """
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type_name(obj)}", line=line_of(obj))
    allowed = tuple(allowed)
    canonical = canonical_names(allowed)
    out: Dict[str, Any] = {}
    for key, value in obj.items():
        name = canonical.get(str(key).lower())
        if name is None:
            raise ConfigError(f'{where}: unknown field "{key}"{did_you_mean(key, allowed)}', line=line_of(obj, key))
        if name in out:
            raise ConfigError(f'{where}: field "{key}" given twice', line=line_of(obj, key))
        out[name] = value
    return out


def key_lines(obj: Any) -> Mapping[Any, int]:
    """The line of each key of a manifest mapping as written (empty for a plain dict), kept by reference: a
    message about a field's value (a reference to something missing) can point at the field itself.

    >>> key_lines({"service": "web"})
    {}
    """
    lines: Mapping[Any, int] = getattr(obj, "key_lines", None) or {}
    return lines


def line_in(lines: Mapping[Any, int], name: str) -> Optional[int]:
    """The line of field ``name`` in :func:`key_lines`, matching names case-insensitively.

    >>> line_in({"Middlewares": 9}, "middlewares"), line_in({}, "service")
    (9, None)
    """
    if name in lines:
        return lines[name]
    lowered = name.lower()
    return next((line for key, line in lines.items() if str(key).lower() == lowered), None)


def canonical_options(options: Mapping[str, Any], allowed: Iterable[str],
                      old_names: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """A middleware's top-level options by canonical name; ``old_names`` map former names to current ones.

    The messages name the option itself (the caller adds the middleware) and its line in a manifest:
    ``unknown option "tokenKy"; did you mean "tokenKey"?``, ``tokenKey: given twice (as "tokenQueryKey" too)``.

    >>> canonical_options({"TokenQueryKey": "jwt"}, ("tokenKey",), {"tokenQueryKey": "tokenKey"})
    {'tokenKey': 'jwt'}
    """
    allowed = tuple(allowed)
    known = {name.lower(): name for name in allowed}
    known.update({old.lower(): new for old, new in (old_names or {}).items()})
    result: Dict[str, Any] = {}
    for name, value in options.items():
        canonical = known.get(str(name).lower())
        if canonical is None:
            raise ConfigError(f'unknown option "{name}"{did_you_mean(name, allowed)}', line=line_of(options, name))
        if canonical in result:
            raise ConfigError(f'{canonical}: given twice (as "{name}" too)', line=line_of(options, name))
        result[canonical] = value
    return result


def pick_case_insensitive(options: Mapping[str, Any], names: Iterable[str]) -> Dict[str, Any]:
    """The ``names`` present in ``options`` in any spelling, keyed by the canonical name; never refuses
    (for showing options that were validated elsewhere, or are in error).

    >>> pick_case_insensitive({"ClaimS": "x", "other": 1}, ("claims", "tokenKey"))
    {'claims': 'x'}
    """
    lowered = {str(k).lower(): v for k, v in options.items()}
    return {name: lowered[name.lower()] for name in names if name.lower() in lowered}


# --- types ---------------------------------------------------------------------------------------------

def want_str(value: Any, where: str, *, empty_ok: bool = False) -> str:
    """A scalar as a string (manifests write ``port: 80`` and ``port: "80"`` alike).

    >>> want_str(80, "port")
    '80'
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: expected a string, got {type_name(value)}")
    text = str(value)
    if not text and not empty_ok:
        raise ConfigError(f"{where}: must not be empty")
    return text


def want_text(value: Any, where: str) -> str:
    """A string with something in it besides whitespace (a secret, a key, a path, an expression)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string")
    return value


def want_bool(value: Any, where: str) -> bool:
    """``true``/``false``, as a boolean or as a string in any case (labels and env values are strings)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{where}: expected true or false, got {_got(value)}")


def want_number(value: Any, where: str, *, whole: bool = False, minimum: Optional[Number] = None) -> Number:
    """A number (written as a number or as a string of digits); ``whole``: an int.

    >>> want_number("0.5", "clientConfig.timeoutSeconds", minimum=0.001)
    0.5
    >>> want_number(0, "clientConfig.timeoutSeconds", minimum=0.001)
    Traceback (most recent call last):
    gatekeeper.errors.ConfigError: clientConfig.timeoutSeconds: must be at least 0.001
    """
    if isinstance(value, str) and _SIGNED_NUMBER.fullmatch(value):
        value = float(value) if "." in value else int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
        raise ConfigError(f"{where}: expected a {'whole ' if whole else ''}number, got {_got(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be at least {_figure(minimum)}")
    return value


def want_int(value: Any, where: str, *, minimum: Optional[int] = None) -> int:
    """A whole number (``"8080"`` too)."""
    result = want_number(value, where, whole=True, minimum=minimum)
    assert isinstance(result, int)
    return result


def want_seconds(value: Any, where: str) -> int:
    """A duration in whole seconds, ``>= 0`` (``clockSkewSeconds``).

    >>> want_seconds("30", "clockSkewSeconds")
    30
    """
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: expected a whole number of seconds >= 0, got {_got(value)}")
    return value


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def read_duration(value: Any, where: str, *, positive: bool = True) -> float:
    """Seconds from a Go duration string or a number (Traefik reads a bare number as seconds).

    >>> read_duration("250ms", "timeout"), read_duration(3, "interval")
    (0.25, 3.0)
    >>> read_duration("soon", "interval")
    Traceback (most recent call last):
    gatekeeper.errors.ConfigError: interval: expected a duration such as "10s" or "500ms", got a string
    """
    seconds: Optional[float] = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif text and re.fullmatch(f"(?:{_DURATION_PART.pattern})+", text):
            seconds = sum(float(n) * _DURATION_UNIT[u] for n, u in _DURATION_PART.findall(text))
    if seconds is None:
        raise ConfigError(f'{where}: expected a duration such as "10s" or "500ms", got {type_name(value)}')
    if positive and seconds <= 0:
        raise ConfigError(f"{where}: must be more than 0")
    return seconds


def want_map(value: Any, where: str) -> Mapping[str, Any]:
    """A mapping, as it is (its keys are the caller's to check)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type_name(value)}")
    return value


def want_list(value: Any, where: str) -> List[Any]:
    """A list; a single string is a list of one (Traefik accepts it in labels)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {type_name(value)}")
    return value


def want_str_list(value: Any, where: str) -> List[str]:
    """A list of strings; each item's problem names its index (``entryPoints[1]``)."""
    return [want_str(v, f"{where}[{i}]") for i, v in enumerate(want_list(value, where))]


def want_str_map(value: Any, where: str) -> Dict[str, str]:
    """A mapping of strings to strings (header values may be empty; ``null`` is empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type_name(value)}")
    return {want_str(k, where): want_str(v, f"{where}.{k}", empty_ok=True) if v is not None else ""
            for k, v in value.items()}


# --- PEM and Secret references -------------------------------------------------------------------------

def want_pem(value: Any, where: str) -> Optional[str]:
    """PEM text given inline (normalised to end in one newline), or the path of a file that exists now
    (checked at load: the check needs no network); ``None`` when not given."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a file path or PEM text")
    if PEM_MARKER in value:
        return value.strip() + "\n"
    if not os.path.isfile(value):
        raise ConfigError(f"{where}: no such file {value}")
    return value


def refuse_secret_reference(text: str, where: str) -> str:
    """``text``, unless it is a Kubernetes Secret reference left unresolved (outside the Kubernetes
    provider, or a Secret it could not read): using the reference itself as a secret would be a mistake.

    >>> refuse_secret_reference("urn:k8s:secret:jwt:key", "signingSecret")
    Traceback (most recent call last):
    gatekeeper.errors.ConfigError: signingSecret: unresolved Kubernetes Secret reference
    """
    if text.startswith(SECRET_URN_PREFIX):
        raise ConfigError(f"{where}: unresolved Kubernetes Secret reference")
    return text
