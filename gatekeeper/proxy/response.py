"""Reading an upstream's response: the head (status line, headers, 1xx skipped) and the body, framed by
length, chunks or close, streamed as a WSGI iterable that hands its connection back to the pool.

Kept apart from the connection pooling (client.py) because it is the half that parses what the upstream
sends: every check on a garbled, oversized or conflicting response is here.
"""
from __future__ import annotations

import io
import re
import socket
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Protocol, Tuple

from gatekeeper.errors import BadGateway, GatewayTimeout, UpstreamAborted
from gatekeeper.wsgi import UPSTREAM_ERROR, Environ, Headers

CHUNK = 64 * 1024
MAX_LINE = 64 * 1024
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class UpstreamConnection(Protocol):
    """What a response reads from: the connection's buffered reader (client.Connection)."""

    reader: io.BufferedReader

    def close(self) -> None: ...


class ConnectionOwner(Protocol):
    """Where a connection goes back once its response was read to the end (client.ConnectionPool)."""

    def release(self, conn: Any) -> None: ...


class UpstreamClosed(BadGateway):
    """The upstream closed the connection before sending a response (stale keep-alive if reused)."""


@dataclass
class Response:
    """A response head, and its body as an iterable with ``close()`` (the WSGI response iterable)."""

    status: int
    reason: str
    headers: Headers
    body: "ResponseBody"


def read_response(pool: ConnectionOwner, conn: UpstreamConnection, method: str, limit: int) -> Response:
    """Parse the status line and headers (skipping 1xx interim responses), then frame the body."""
    while True:
        version, status, reason, headers = read_head(conn.reader, limit)
        if status >= 200:
            break
        if status == 101:
            raise BadGateway("upstream switched protocols, which was not asked for")
    headers, body = frame_body(pool, conn, method=method, status=status, version=version, headers=headers)
    return Response(status, reason, headers, body)


def frame_body(pool: ConnectionOwner, conn: UpstreamConnection, *, method: str, status: int, version: str,
               headers: Headers) -> Tuple[Headers, "ResponseBody"]:
    """How the body of a final answer is delimited (RFC 9112 6.3), and whether its connection may be
    reused; the headers with one ``Content-Length``."""
    length, chunked, keep_alive = framing(headers, keep_alive=version == "HTTP/1.1")
    if length is not None:
        headers = one_content_length(headers, length)
    if method == "HEAD" or status in (204, 304):
        if method == "HEAD" and (chunked or length):
            # Some servers (gevent's pywsgi among them) send the body of a HEAD answer anyway; bytes arriving
            # after the pool's liveness check would be read as the next client's response. Never reuse it.
            keep_alive = False
        mode, length = "none", 0
    elif chunked:
        mode = "chunked"
    elif length is not None:
        mode = "length"
    else:
        mode, keep_alive = "close", False
    return headers, ResponseBody(pool, conn, mode, length or 0, keep_alive)


def framing(headers: Headers, keep_alive: bool) -> Tuple[Optional[int], bool, bool]:
    """(Content-Length or None, chunked, keep-alive) from the response headers.

    >>> framing([("Content-Length", "5, 5"), ("Connection", "close")], keep_alive=True)
    (5, False, False)
    """
    length: Optional[int] = None
    chunked = False
    for name, value in headers:
        lower = name.lower()
        if lower == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            keep_alive = "close" not in tokens and (keep_alive or "keep-alive" in tokens)
        elif lower == "transfer-encoding":
            chunked = value.lower().rsplit(",", 1)[-1].strip() == "chunked"
            if not chunked:
                keep_alive = False  # read until close
        elif lower == "content-length":
            length = parse_length(value, length)
    return length, chunked, keep_alive


def one_content_length(headers: Headers, length: int) -> Headers:
    """``5, 5`` or two equal headers become one clean value, as clients may refuse the list.

    >>> one_content_length([("Content-Length", "5"), ("content-length", "5")], 5)
    [('Content-Length', '5')]
    """
    lengths = [v for n, v in headers if n.lower() == "content-length"]
    if len(lengths) + sum(v.count(",") for v in lengths) <= 1:
        return headers
    return [(n, v) for n, v in headers if n.lower() != "content-length"] + [("Content-Length", str(length))]


def parse_length(value: str, previous: Optional[int]) -> int:
    """A Content-Length value (``5, 5`` allowed); differing or non-numeric values are refused."""
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise BadGateway(f"upstream sent an invalid Content-Length: {value!r}")
    length = int(values.pop())
    if previous is not None and previous != length:
        raise BadGateway("upstream sent conflicting Content-Length headers")
    return length


def read_head(reader: io.BufferedReader, limit: int) -> Tuple[str, int, str, Headers]:
    """One response head: (version, status, reason, headers); garbled or oversized -> BadGateway."""
    line = reader.readline(MAX_LINE)
    if not line:
        raise UpstreamClosed("upstream closed the connection without answering")
    parts = line.rstrip(b"\r\n").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 \
            or not parts[1].isdigit():
        raise BadGateway(f"upstream sent a garbled status line ({len(line)} bytes, starting {line[:8]!r})")
    size = len(line)
    headers: Headers = []
    while True:
        line = reader.readline(MAX_LINE)
        size += len(line)
        if size > limit:
            raise BadGateway("upstream response head is too large")
        if line in (b"\r\n", b"\n"):
            break
        if not line.endswith(b"\n"):
            raise BadGateway("upstream closed the connection inside the response head")
        if line[:1] in (b" ", b"\t") and headers:  # obsolete line folding
            folded, before = headers.pop()
            headers.append((folded, before + " " + line.strip().decode("latin-1")))
            continue
        name, sep, value = line.partition(b":")
        value = value.strip()
        if not sep or not name or b" " in name or b"\t" in name or b"\r" in value or b"\0" in value:
            # no space in or around a name; a bare CR or NUL in a value would make the server refuse it
            raise BadGateway(f"upstream sent a garbled header line (name {name[:40]!r})")
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    return parts[0].decode("latin-1"), int(parts[1]), reason, headers


class ResponseBody:
    """The upstream body as a WSGI iterable: chunks of at most 64 KiB, never the whole body.

    :meth:`read_first` reads the first piece before the status goes to the client, so an upstream failing
    right after its head is still answered 502 (504 on a timeout). A failure after that raises
    :class:`UpstreamAborted` from the iteration, and the server cuts the client connection rather than
    pretending the short body is complete.

    ``close()`` (called by the WSGI server, also when the client went away) returns the connection to
    the pool only if the body was read to its end and the upstream keeps it alive; otherwise the
    connection is closed.
    """

    __slots__ = ("conn", "done", "first", "keep_alive", "length", "mode", "pieces", "pool", "reader")

    def __init__(self, pool: ConnectionOwner, conn: UpstreamConnection, mode: str, length: int,
                 keep_alive: bool) -> None:
        self.pool, self.mode, self.length = pool, mode, length
        self.conn: Optional[UpstreamConnection] = conn  # None once closed
        self.reader = conn.reader
        self.keep_alive = keep_alive
        self.done = mode == "none"
        self.pieces: Optional[Iterator[bytes]] = None
        self.first = b""

    def read_first(self) -> bytes:
        """The first piece of the body (``b""`` when there is none); BadGateway / GatewayTimeout when the
        upstream fails before it. Sets ``done`` when that piece is the whole body."""
        if self.done:
            return b""
        self.pieces = self.read_pieces()
        first = next(self.pieces, b"")
        if self.mode == "length" and len(first) == self.length:
            self.done = True
        self.first = first
        return first

    def __iter__(self) -> Iterator[bytes]:
        if self.pieces is None:
            self.read_first()
        first, self.first = self.first, b""
        if first:
            yield first
        if self.done:
            return
        try:
            yield from self.pieces  # type: ignore[misc]
        except (BadGateway, GatewayTimeout) as exc:
            raise UpstreamAborted(f"{exc} (after the response started)") from exc

    def read_pieces(self) -> Iterator[bytes]:
        """The body as framed, with socket errors translated; sets ``done`` at its end."""
        try:
            if self.mode == "length":
                yield from self.read_length(self.length)
            elif self.mode == "chunked":
                yield from self.read_chunked()
            elif self.mode == "close":
                yield from self.read_to_close()
        except socket.timeout as exc:
            raise GatewayTimeout("upstream timed out in the middle of the body") from exc
        except OSError as exc:
            raise BadGateway(f"upstream failed in the middle of the body: {exc.strerror or exc}") from exc
        self.done = True

    def read_length(self, remaining: int) -> Iterator[bytes]:
        read1 = self.reader.read1
        while remaining > 0:
            data = read1(min(CHUNK, remaining))
            if not data:
                raise BadGateway(f"upstream body ended {remaining} bytes short")
            remaining -= len(data)
            yield data

    def read_chunked(self) -> Iterator[bytes]:
        reader = self.reader
        while True:
            line = reader.readline(MAX_LINE)
            if not line.endswith(b"\n"):
                raise BadGateway("upstream closed the connection inside a chunked body")
            size_text = line.split(b";", 1)[0].strip()
            if not CHUNK_SIZE.fullmatch(size_text):  # int(x, 16) would take "-1", "0x10", "1_0"
                raise BadGateway("upstream sent a garbled chunk size")
            size = int(size_text, 16)
            if size == 0:
                break
            yield from self.read_length(size)
            if reader.readline(MAX_LINE) not in (b"\r\n", b"\n"):
                raise BadGateway("upstream chunk not followed by CRLF")
        while reader.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
            pass  # trailers: hop-by-hop, dropped

    def read_to_close(self) -> Iterator[bytes]:
        read1 = self.reader.read1
        while True:
            data = read1(CHUNK)
            if not data:
                return
            yield data

    def close(self) -> None:
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        if self.done and self.keep_alive:
            self.pool.release(conn)
        else:
            conn.close()


class Relay:
    """The WSGI iterable of a streamed upstream body: notes an upstream failure mid-body for the access
    log and metrics (``gatekeeper.upstream.error = "aborted"``) and lets :class:`UpstreamAborted` reach
    the server, which cuts the client connection and logs one line."""

    __slots__ = ("body", "environ")

    def __init__(self, body: ResponseBody, environ: Environ) -> None:
        self.body, self.environ = body, environ

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.body
        except UpstreamAborted:
            self.environ[UPSTREAM_ERROR] = "aborted"
            raise

    def close(self) -> None:
        self.body.close()
