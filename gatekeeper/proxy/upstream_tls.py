"""TLS towards HTTPS upstreams: what Traefik's ``serversTransport`` says about it, as one SSL context per server.

Verification is on unless ``insecure_skip_verify`` says otherwise: the certificate chain against the system's
root CAs, or only against ``root_cas`` when given (as Go does with ``RootCAs``), and the name against
``server_name`` when given, else the server URL's host. ``server_name`` is also what is sent as SNI.
``certificates`` are the client certificate (and key) for upstreams that ask for one (mTLS). Files are read
when the configuration compiles: a missing or broken file is a configuration error, never a late 502.

Usage::

    tls = UpstreamTLS(root_cas=("/etc/gatekeeper/ca.pem",), server_name="api.internal")
    context = tls.context()
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Optional, Tuple

from gatekeeper.errors import ConfigError

__all__ = ["UpstreamTLS", "client_context"]

PEM_MARKER = "-----BEGIN"


@dataclass(frozen=True)
class UpstreamTLS:
    """One serversTransport's TLS settings (file paths or inline PEM).

    >>> UpstreamTLS(insecure_skip_verify=True).context().verify_mode == ssl.CERT_NONE
    True
    """

    server_name: str = ""
    insecure_skip_verify: bool = False
    root_cas: Tuple[str, ...] = ()
    certificates: Tuple[Tuple[str, str], ...] = ()  # (certFile, keyFile)

    def context(self) -> ssl.SSLContext:
        """A client context for these settings; ConfigError names the file that could not be used."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.root_cas:
            for ca in self.root_cas:
                try:
                    if PEM_MARKER in ca:
                        context.load_verify_locations(cadata=ca)
                    else:
                        context.load_verify_locations(cafile=ca)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    raise ConfigError(f"rootCAs: cannot use {shown(ca)}: {reason(exc)}") from exc
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if len(self.certificates) > 1:
            raise ConfigError("certificates: only one client certificate is supported")
        for cert, key in self.certificates:
            if PEM_MARKER in cert or PEM_MARKER in key:
                raise ConfigError("certificates: certFile and keyFile must be file paths")
            try:
                context.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"certificates: cannot use {cert} with {key}: {reason(exc)}") from exc
        return context


def shown(value: str) -> str:
    return "inline PEM" if PEM_MARKER in value else value


def reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)


def client_context(tls: Optional[UpstreamTLS]) -> ssl.SSLContext:
    """The context of an HTTPS server's pool: ``tls``'s, else verification against the system roots."""
    return tls.context() if tls is not None else ssl.create_default_context()
