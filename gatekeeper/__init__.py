"""gatekeeper: a JWT-securing API gateway.

Public API only; importing it never monkey-patches, starts a thread or touches the network.

    >>> import gatekeeper
    >>> issubclass(gatekeeper.Unauthorized, gatekeeper.GatekeeperError)
    True
"""
import typing  # no `from __future__ import annotations`: it would add a public name, `annotations`

from gatekeeper.errors import (
    AuthError,
    BadGateway,
    ConfigError,
    ExpressionError,
    Forbidden,
    GatekeeperError,
    GatewayTimeout,
    Unauthorized,
)

if typing.TYPE_CHECKING:  # for type checkers only: at run time both are loaded on first use, below
    from gatekeeper.app import Gateway
    from gatekeeper.jwt.middleware import JWTMiddleware

__all__ = [
    "AuthError",
    "BadGateway",
    "ConfigError",
    "ExpressionError",
    "Forbidden",
    "GatekeeperError",
    "Gateway",
    "GatewayTimeout",
    "JWTMiddleware",
    "Unauthorized",
]


def __getattr__(name: str) -> object:
    """Load ``Gateway`` and ``JWTMiddleware`` on first use, so that ``import gatekeeper`` stays light
    (the gateway pulls in the proxy, PLY and RE2)."""
    if name == "Gateway":
        from gatekeeper.app import Gateway
        return Gateway
    if name == "JWTMiddleware":
        from gatekeeper.jwt.middleware import JWTMiddleware
        return JWTMiddleware
    raise AttributeError(f"module 'gatekeeper' has no attribute {name!r}")
