"""``JWTMiddleware``: the gateway's JWT checks around any WSGI app (Flask, Django, a bare callable).

It takes the manifest's options, as snake_case keywords or (``from_config``) the manifest's camelCase,
puts the verified claims in ``environ["gatekeeper.claims"]`` and answers 401/403 exactly as the gateway.

    >>> from gatekeeper import JWTMiddleware
    >>> app.wsgi_app = JWTMiddleware(app.wsgi_app, signing_secret="s3cret",   # doctest: +SKIP
    ...                              claims="Equals(`grp`, `admin`)",
    ...                              forward_headers={"X-Group": "grp"})
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping

from gatekeeper.jwt.auth import JWTAuth
from gatekeeper.wsgi import Environ, StartResponse, WSGIApp

# Maps whose keys are option names too (converted); forwardHeaders' keys are header names (kept).
_NESTED_OPTION_MAPS = ("tokenSource", "clientConfig")


def camel_case(name: str) -> str:
    """``signing_secret_base64_encoded`` -> ``signingSecretBase64Encoded``; camelCase passes through."""
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def _camel_options(options: Mapping[str, Any]) -> Dict[str, Any]:
    """Keyword options as the manifest spells them (nested option maps too)."""
    result: Dict[str, Any] = {}
    for name, value in options.items():
        key = camel_case(name)
        nested = key in _NESTED_OPTION_MAPS and isinstance(value, Mapping)
        result[key] = {camel_case(k): v for k, v in value.items()} if nested else value
    return result


class JWTMiddleware:
    """Wrap ``app`` so only requests with a valid JWT (and satisfied ``claims``) reach it.

        app = JWTMiddleware(app, signing_secret="...", forward_headers={"X-Group": "grp"})
        app = JWTMiddleware.from_config(app, {"publicKey": PEM, "claims": "Equals(`grp`, `admin`)"})

    Invalid options raise ``gatekeeper.errors.ConfigError`` at construction, naming the option.
    """

    def __init__(self, app: WSGIApp, **options: Any) -> None:
        self._init(app, JWTAuth.from_config(_camel_options(options)))

    @classmethod
    def from_config(cls, app: WSGIApp, options: Mapping[str, Any]) -> "JWTMiddleware":
        """Build from manifest-style options (camelCase, matched case-insensitively)."""
        self = cls.__new__(cls)
        self._init(app, JWTAuth.from_config(options))
        return self

    def _init(self, app: WSGIApp, auth: JWTAuth) -> None:
        self.app = app
        self.auth = auth
        self._wrapped = auth.wrap(app)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return self._wrapped(environ, start_response)
