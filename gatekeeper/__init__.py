"""gatekeeper: a JWT-securing API gateway.

Public API only; importing it never monkey-patches, starts a thread or touches the network.
"""
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


def __getattr__(name: str):
    # Lazy so that ``import gatekeeper`` stays light: the gateway pulls in the proxy and PLY.
    if name == "Gateway":
        from gatekeeper.app import Gateway
        return Gateway
    if name == "JWTMiddleware":
        from gatekeeper.jwt.middleware import JWTMiddleware
        return JWTMiddleware
    raise AttributeError(f"module 'gatekeeper' has no attribute {name!r}")
