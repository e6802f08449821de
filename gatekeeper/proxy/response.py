"""Reading an upstream's response: the head (status line, headers, 1xx skipped) and the body, framed by
length, chunks or close, streamed as a WSGI iterable that hands its connection back to the pool.

Kept apart from the connection pooling (client.py) because it is the half that parses what the upstream
sends: every check on a garbled, oversized or conflicting response is here.
"""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Protocol, Tuple

from gatekeeper.errors import BadGateway, GatewayTimeout, UpstreamAborted
from gatekeeper.wsgi import UPSTREAM_ERROR, Environ, Headers

CHUNK = 64 * 1024
MAX_LINE = 64 * 1024
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
HEAD_END = re.compile(rb"\n\r?\n")   # the blank line that ends a head (a bare LF one too, as readline saw it)
# One well-formed header line from its start: a name without whitespace, the value without CR, LF or NUL, the
# whitespace around it left out. A head whose every line matches is read in one findall (header_fields).
FIELD = re.compile(r"^([^:\s]+):[ \t\x0b\x0c]*([^\r\n\0]*?)[ \t\x0b\x0c]*\r?\n", re.M)
# Lengths of the header names framing() looks at (connection, content-length, transfer-encoding): a cheap test
# before lowering a name.
FRAMING_NAME_LENGTHS = frozenset({10, 14, 17})


class SocketReader:
    """A connection's receive side: each ``recv`` asks for up to 64 KiB, so the head and a small body of an
    answer arrive in one system call, and what the parsers take is sliced from that one block.

    Replaces ``sock.makefile("rb")`` (a BufferedReader over a SocketIO): no layers between the parser and the
    socket, the head is parsed from one block rather than line by line, and :meth:`holds_bytes` knows without
    a system call whether anything is left unread (a pooled connection's stale-check asked the socket).

    >>> left, right = socket.socketpair()
    >>> left.sendall(b"HTTP/1.1 200 OK\\r\\nA: b\\r\\n\\r\\nbody"); reader = SocketReader(right)
    >>> reader.read_head_block(1024), reader.read1(2), reader.read1(9), reader.holds_bytes()
    (b'HTTP/1.1 200 OK\\r\\nA: b\\r\\n\\r\\n', b'bo', b'dy', False)
    >>> left.close(); right.close()
    """

    __slots__ = ("data", "pos", "recv")

    def __init__(self, sock: socket.socket) -> None:
        self.recv: Callable[[int], bytes] = sock.recv
        self.data = b""
        self.pos = 0

    def holds_bytes(self) -> bool:
        return self.pos < len(self.data)

    def more(self) -> bool:
        """Receive once and append to what is unread; False at EOF."""
        received = self.recv(CHUNK)
        if not received:
            return False
        self.data = self.data[self.pos:] + received if self.pos < len(self.data) else received
        self.pos = 0
        return True

    def read1(self, size: int) -> bytes:
        """Up to ``size`` bytes: what is buffered, else one ``recv``; ``b""`` at EOF."""
        data, pos = self.data, self.pos
        if pos >= len(data):
            data = self.recv(CHUNK)
            if len(data) <= size:
                self.data, self.pos = b"", 0
                return data
            self.data, pos = data, 0
        piece = data[pos:pos + size]
        self.pos = pos + len(piece)
        return piece

    def readline(self, limit: int) -> bytes:
        """One line with its LF, at most ``limit`` bytes (less at EOF), as ``BufferedReader.readline``."""
        while True:
            end = self.data.find(b"\n", self.pos, self.pos + limit)
            if end >= 0:
                return self.take(end + 1 - self.pos)
            if len(self.data) - self.pos >= limit or not self.more():
                return self.take(min(limit, len(self.data) - self.pos))

    def read_head_block(self, limit: int) -> bytes:
        """The bytes through the blank line that ends a head; at EOF or past ``limit`` bytes without one,
        what there is (the caller tells why it is incomplete)."""
        while True:
            found = HEAD_END.search(self.data, self.pos)
            if found is not None:
                return self.take(found.end() - self.pos)
            if len(self.data) - self.pos > limit or not self.more():
                return self.take(len(self.data) - self.pos)

    def take(self, size: int) -> bytes:
        pos = self.pos
        self.pos = pos + size
        if pos == 0 and size == len(self.data):
            return self.data
        return self.data[pos:pos + size]

    def close(self) -> None:
        self.data, self.pos = b"", 0


class UpstreamConnection(Protocol):
    """What a response reads from: the connection's reader (client.Connection)."""

    reader: SocketReader

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
        if len(name) not in FRAMING_NAME_LENGTHS:
            continue
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


def read_head(reader: SocketReader, limit: int) -> Tuple[str, int, str, Headers]:
    """One response head: (version, status, reason, headers); garbled or oversized -> BadGateway."""
    block = reader.read_head_block(limit)
    if not block:
        raise UpstreamClosed("upstream closed the connection without answering")
    lines = block.split(b"\n")
    line = lines[0]
    parts = line.rstrip(b"\r").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 \
            or not parts[1].isdigit():
        raise BadGateway(f"upstream sent a garbled status line ({len(line) + 1} bytes, starting {line[:8]!r})")
    if len(block) > limit:
        raise BadGateway("upstream response head is too large")
    if not HEAD_END.search(block, len(line)):
        raise BadGateway("upstream closed the connection inside the response head")
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    return parts[0].decode("latin-1"), int(parts[1]), reason, header_fields(block, len(line) + 1, lines)


def header_fields(block: bytes, start: int, lines: List[bytes]) -> Headers:
    """The header fields of a whole head (``block``, its fields from ``start``): one regex pass when every
    line is a plain field, else line by line (obsolete folding, or the garbled line to name).

    >>> block = b"HTTP/1.1 200 OK\\r\\nA:  b \\r\\nC-D:e\\n\\r\\n"
    >>> header_fields(block, 17, block.split(b"\\n"))
    [('A', 'b'), ('C-D', 'e')]
    """
    fields = FIELD.findall(block.decode("latin-1"), start)
    if len(fields) == len(lines) - 3:
        return fields
    return header_lines(lines[1:-2])


def header_lines(lines: List[bytes]) -> Headers:
    """The header fields of a head's lines (LF split off, CR still on); a garbled line -> BadGateway."""
    headers: Headers = []
    for line in lines:
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
    return headers


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
