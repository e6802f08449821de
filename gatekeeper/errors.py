"""One root error and one class per failure a caller can act on.

Build-time problems are ``ConfigError`` (with the file, object and position they come from) or
``ExpressionError`` (a rule or claims expression that does not compile); request-time refusals are
``Unauthorized`` / ``Forbidden`` so that the WSGI layer can turn them into canned answers.
"""
from __future__ import annotations

from typing import Optional


class GatekeeperError(Exception):
    """Root of every error gatekeeper raises on purpose."""


class ConfigError(GatekeeperError):
    """A manifest, object or option that cannot be used.

    ``str(err)`` reads ``conf.d/api.yaml:12: middleware "auth": publicKey: not a PEM public key``.
    """

    def __init__(self, reason: str, *, file: Optional[str] = None, line: Optional[int] = None,
                 obj: Optional[str] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.file = file
        self.line = line
        self.obj = obj

    def located(self, *, file: Optional[str] = None, line: Optional[int] = None,
                obj: Optional[str] = None) -> "ConfigError":
        """A copy that says where the problem is, keeping what is already known."""
        err = ConfigError(self.reason, file=self.file or file, line=self.line or line, obj=self.obj or obj)
        err.__cause__ = self.__cause__ or self
        return err

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        obj = f"{self.obj}: " if self.obj else ""
        return f"{where}{obj}{self.reason}"


class ExpressionError(ConfigError):
    """A rule or claims expression that does not compile; knows its column for a caret line."""

    def __init__(self, message: str, expression: str, column: int) -> None:
        self.message = message
        self.expression = expression
        self.column = column  # 1-based
        super().__init__(self.render())

    def render(self) -> str:
        """``message at column N`` followed by the expression and a caret under the column."""
        flat = self.expression.replace("\n", " ").replace("\t", " ")
        return f"{self.message} at column {self.column}\n  {flat}\n  {' ' * (self.column - 1)}^"


class AuthError(GatekeeperError):
    """A request the JWT middleware refuses; ``reason`` is a short machine word for logs and metrics."""

    status = 401

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


class Unauthorized(AuthError):
    """No usable token: 401."""

    status = 401


class Forbidden(AuthError):
    """A valid token whose claims do not satisfy the middleware: 403."""

    status = 403


class BadGateway(GatekeeperError):
    """The upstream refused, reset or garbled the exchange: 502."""


class GatewayTimeout(GatekeeperError):
    """The upstream did not answer in time: 504."""


class UpstreamAborted(BadGateway):
    """The upstream failed after the response had started going to the client: the only honest answer
    left is to cut the client connection (no 500 page after a 200 head). Servers recognise it and close
    the connection with one log line and no traceback."""
