"""Traefik's ``http.serversTransports`` (file provider): TLS towards HTTPS servers, idle pool size, timeouts.

Read from every file-provider document of a snapshot (compile resolves ``loadBalancer.serversTransport``
against them, so a changed transport rebuilds the services using it). What Traefik has and gatekeeper does
not (HTTP/2 pings, SPIFFE, peer certificate SANs, TLS versions and ciphers) is refused, never ignored.

    >>> t = read_transport("t@file", {"serverName": "api", "forwardingTimeouts": {"dialTimeout": "2s"}},
    ...                    Source("a.yaml"))
    >>> t.server_name, t.dial_timeout
    ('api', 2.0)
"""
from __future__ import annotations

from dataclasses import replace
from operator import attrgetter
from typing import Any, Dict, List, Mapping, Tuple

from gatekeeper.config.manifests import Snapshot
from gatekeeper.config.model import Definitions, ServiceDef, Source, TransportDef, qualify
from gatekeeper.config.providers.fields import expand_env
from gatekeeper.config.providers.service_options import read_duration
from gatekeeper.errors import ConfigError
from gatekeeper.options import line_of, pick, want_bool, want_int, want_list, want_str
from gatekeeper.proxy.client import ProxyLimits
from gatekeeper.proxy.upstream_tls import UpstreamTLS

__all__ = ["read_transport", "read_transports", "transport_limits", "with_transports"]

SUPPORTED = ("serverName", "insecureSkipVerify", "rootCAs", "certificates", "maxIdleConnsPerHost", "disableHTTP2",
             "forwardingTimeouts")
REFUSED = {
    "peerCertURI": "peer certificate URI checks are not supported",
    "peerCertSANs": "peer certificate SAN checks are not supported",
    "spiffe": "SPIFFE is not supported",
    "cipherSuites": "gatekeeper uses Python's default TLS 1.2+ cipher suites",
    "minVersion": "gatekeeper always requires TLS 1.2 or later",
    "maxVersion": "gatekeeper always requires TLS 1.2 or later",
}
TIMEOUTS = ("dialTimeout", "responseHeaderTimeout", "idleConnTimeout")
REFUSED_TIMEOUTS = {
    "readIdleTimeout": "HTTP/2 health pings are not supported (gatekeeper speaks HTTP/1.1 to servers)",
    "pingTimeout": "HTTP/2 health pings are not supported (gatekeeper speaks HTTP/1.1 to servers)",
    "readTimeout": "use responseHeaderTimeout (it bounds every read of the answer)",
    "writeTimeout": "not supported",
}


_TRANSPORT_NAME = attrgetter("servers_transport")


def read_transport(name: str, body: Any, source: Source) -> TransportDef:
    fields = pick(body, (*SUPPORTED, *REFUSED), "serversTransport")
    for option, why in REFUSED.items():
        if option in fields:
            raise ConfigError(f"{option}: not supported ({why})")
    timeouts = pick(fields.get("forwardingTimeouts"), (*TIMEOUTS, *REFUSED_TIMEOUTS), "forwardingTimeouts")
    for option, why in REFUSED_TIMEOUTS.items():
        if option in timeouts:
            raise ConfigError(f"forwardingTimeouts.{option}: not supported ({why})")
    want_bool(fields.get("disableHTTP2", False), "disableHTTP2")  # either way: HTTP/1.1 is all gatekeeper speaks
    certificates: List[Tuple[str, str]] = []
    for i, entry in enumerate(want_list(fields.get("certificates") or [], "certificates")):
        cert = pick(entry, ("certFile", "keyFile"), f"certificates[{i}]")
        for part in ("certFile", "keyFile"):
            if part not in cert:
                raise ConfigError(f"certificates[{i}].{part}: required")
        certificates.append((want_str(cert["certFile"], f"certificates[{i}].certFile"),
                             want_str(cert["keyFile"], f"certificates[{i}].keyFile")))
    if len(certificates) > 1:
        raise ConfigError("certificates: only one client certificate is supported")
    seconds = {option: read_duration(timeouts[option], f"forwardingTimeouts.{option}", positive=False)
               for option in TIMEOUTS if option in timeouts}
    for option, value in seconds.items():
        if value < 0:
            raise ConfigError(f"forwardingTimeouts.{option}: must not be negative")
    return TransportDef(
        name=name, source=source,
        server_name=want_str(fields.get("serverName", ""), "serverName", empty_ok=True),
        insecure_skip_verify=want_bool(fields.get("insecureSkipVerify", False), "insecureSkipVerify"),
        root_cas=tuple(want_str(ca, f"rootCAs[{i}]")
                       for i, ca in enumerate(want_list(fields.get("rootCAs") or [], "rootCAs"))),
        certificates=tuple(certificates),
        max_idle_conns_per_host=want_int(fields.get("maxIdleConnsPerHost", 0), "maxIdleConnsPerHost", minimum=0),
        dial_timeout=seconds.get("dialTimeout", 0.0),
        response_header_timeout=seconds.get("responseHeaderTimeout", 0.0),
        idle_conn_timeout=seconds.get("idleConnTimeout", 0.0))


def read_transports(snapshot: Snapshot) -> Tuple[Dict[str, TransportDef], List[ConfigError], Dict[str, str]]:
    """(transports by qualified name, errors, why each transport in error is: by name) of the file-provider
    documents of ``snapshot`` (the first definition of a name wins)."""
    found: Dict[str, TransportDef] = {}
    errors: List[ConfigError] = []
    failed: Dict[str, str] = {}
    for doc in snapshot.documents:
        data = doc.data
        if not isinstance(data, dict) or "apiVersion" in data:
            continue
        http = next((v for k, v in data.items() if str(k).lower() == "http"), None)
        section = next((v for k, v in http.items() if str(k).lower() == "serverstransports"), None) \
            if isinstance(http, dict) else None
        if section is None:
            continue
        if not isinstance(section, dict):
            errors.append(ConfigError("http.serversTransports: expected a mapping of names", file=doc.file,
                                      line=line_of(http, "serversTransports") or doc.line))
            continue
        for name, body in section.items():
            source = Source(doc.file, line_of(section, name) or doc.line, "file")
            qualified = qualify(str(name), "file")
            try:
                transport = read_transport(qualified, expand_env(body, f"http.serversTransports.{name}"), source)
            except ConfigError as err:
                errors.append(err.located(file=doc.file, line=source.line, obj=f'serversTransport "{qualified}"'))
                failed.setdefault(qualified, err.reason)
                continue
            if qualified in found:
                errors.append(ConfigError(f"defined again (first definition in {found[qualified].source} wins)",
                                          file=doc.file, line=source.line, obj=f'serversTransport "{qualified}"'))
                continue
            found[qualified] = transport
    return found, errors, failed


def with_transports(defs: Definitions, transports: Mapping[str, TransportDef],
                    failed: Mapping[str, str]) -> Definitions:
    """Services with their serversTransport resolved into the definition, so a changed transport rebuilds them
    (compile reuses the built service of an unchanged definition). When no service names one (asked in C),
    ``defs`` itself: a reload of 10,000 services spends no Python call on each."""
    if not any(map(_TRANSPORT_NAME, defs.services.values())):
        return defs

    def resolved(d: ServiceDef) -> ServiceDef:
        name = d.servers_transport
        if not name:
            return d
        why = f"is in error: {failed[name]}" if name in failed else "does not exist"
        return replace(d, transport=transports.get(name), transport_error="" if name in transports else why)
    return replace(defs, services={name: resolved(d) for name, d in defs.services.items()})


def transport_limits(definition: ServiceDef, limits: ProxyLimits) -> ProxyLimits:
    """``limits`` (the gateway's) with the service's serversTransport applied; a transport option left at 0
    keeps the gateway's value. A missing transport or one in error is a ConfigError (the service answers 503)."""
    name = definition.servers_transport
    if not name:
        return limits
    t = definition.transport
    if t is None:
        raise ConfigError(f'serversTransport "{name}" {definition.transport_error or "does not exist"}')
    tls = UpstreamTLS(t.server_name, t.insecure_skip_verify, t.root_cas, t.certificates)
    tls.context()  # its files are read now: a CA or key that cannot be used is a configuration error
    return replace(limits, tls=tls, connect_timeout=t.dial_timeout or limits.connect_timeout,
                   response_timeout=t.response_header_timeout or limits.response_timeout,
                   idle_timeout=t.idle_conn_timeout or limits.idle_timeout,
                   max_idle_per_server=t.max_idle_conns_per_host or limits.max_idle_per_server)
