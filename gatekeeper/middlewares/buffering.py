"""Traefik's buffering: the request body is read whole before the service is called, and the answer is
read whole before the client gets it, each in memory up to a threshold and in a temporary file beyond.

- ``maxRequestBodyBytes`` (0: no maximum of its own): a larger body is answered 413 and never forwarded. A
  ``Content-Length`` over it is refused before any byte is read; a chunked body when it goes past. The
  server's ``--max-body-bytes`` still applies first: the smaller of the two wins, both answer 413 (here a
  chunked body past the server limit gets a clean 413 too, since nothing was forwarded yet).
- ``memRequestBodyBytes`` (default 1 MiB): past it the body goes to a temporary file (unlinked at once,
  closed when the answer is done).
- ``maxResponseBodyBytes`` (0: none): a larger answer is dropped and the client gets a 500, as Traefik.
- ``memResponseBodyBytes`` (default 1 MiB): as for requests.
- ``retryExpression``: refused by name (use the ``retry`` middleware).

Reading a slow client's body only holds that request's greenlet: reads wait on the socket through gevent.
"""
from __future__ import annotations

import io
import itertools
import tempfile
from typing import IO, Any, Callable, Iterable, Iterator, List, Mapping, Optional, Tuple

from gatekeeper.errors import ConfigError, GatekeeperError
from gatekeeper.middlewares.base import Context, Wrapper, mark
from gatekeeper.options import pick, want_int
from gatekeeper.wsgi import BODY_REFUSED, UPGRADE, Environ, Headers, StartResponse, WSGIApp, error_response

CHUNK = 64 * 1024
DEFAULT_MEM = 1 << 20
OPTIONS = ("maxRequestBodyBytes", "memRequestBodyBytes", "maxResponseBodyBytes", "memResponseBodyBytes",
           "retryExpression")
NO_BODY_STATUSES = (204, 304)


class TooLarge(Exception):
    """A body went past its maximum."""


def spool(read: Callable[[int], bytes], limit: int, memory: int) -> Tuple[IO[bytes], int]:
    """Everything ``read`` gives, rewound: in memory up to ``memory`` bytes, past it in a temporary file
    (unlinked at once: closing it frees the disk); TooLarge past ``limit`` (0: no limit)."""
    parts: List[bytes] = []
    spilled: Optional[IO[bytes]] = None
    size = 0
    try:
        while True:
            data = read(CHUNK)
            if not data:
                break
            size += len(data)
            if limit and size > limit:
                raise TooLarge
            if spilled is None and size > memory:
                spilled = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the caller, or below on error
                spilled.writelines(parts)
            if spilled is None:
                parts.append(data)
            else:
                spilled.write(data)
    except BaseException:
        if spilled is not None:
            spilled.close()
        raise
    if spilled is None:
        return io.BytesIO(b"".join(parts)), size
    spilled.seek(0)
    return spilled, size


class FileBody:
    """A spooled answer as the WSGI response iterable; ``close()`` (the server calls it, iterated or not)
    frees the buffer and its temporary file."""

    def __init__(self, buffer: IO[bytes]) -> None:
        self.buffer = buffer

    def __iter__(self) -> Iterator[bytes]:
        while True:
            data = self.buffer.read(CHUNK)
            if not data:
                return
            yield data

    def close(self) -> None:
        self.buffer.close()


def chunks_of(parts: Iterable[bytes]) -> Callable[[int], bytes]:
    """A ``read`` over an iterable of byte strings (empty ones skipped: only the end reads as b"")."""
    iterator = iter(parts)

    def read(_size: int) -> bytes:
        for data in iterator:
            if data:
                return data
        return b""
    return read


def buffering(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's buffering middleware (see the module docstring)."""
    fields = pick(options, OPTIONS, "buffering")
    if fields.get("retryExpression"):
        raise ConfigError("buffering.retryExpression: not supported (use the retry middleware, which resends "
                          "requests no upstream got)")
    sizes = [want_int(fields.get(name, default), f"buffering.{name}", minimum=0)
             for name, default in (("maxRequestBodyBytes", 0), ("memRequestBodyBytes", DEFAULT_MEM),
                                   ("maxResponseBodyBytes", 0), ("memResponseBodyBytes", DEFAULT_MEM))]
    return Buffering(*sizes, name=context.name).wrap


class Buffering:
    """One buffering middleware, built."""

    def __init__(self, max_request: int, mem_request: int, max_response: int, mem_response: int, *,
                 name: str) -> None:
        self.max_request, self.mem_request = max_request, mem_request
        self.max_response, self.mem_response = max_response, mem_response
        self.name = name
        self.too_large = error_response(413, f"request body larger than {max_request} bytes")
        self.bad_body = error_response(400, "the request body could not be read")
        self.answer_too_large = error_response(500)
        self.bad_answer = error_response(502, "the upstream answer could not be read")

    def wrap(self, app: WSGIApp) -> WSGIApp:
        def buffered(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            body: Optional[IO[bytes]] = None
            if environ.get("CONTENT_LENGTH") not in (None, "", "0") or environ.get("HTTP_TRANSFER_ENCODING"):
                refused = self.read_request(environ)
                if refused is not None:
                    return refused(environ, self.closing(start_response))
                body = environ["wsgi.input"]
            if environ.get(UPGRADE) is not None:  # a WebSocket's answer never ends: nothing to read whole
                return app(environ, start_response)
            try:
                return self.respond(app, environ, start_response)
            finally:
                if body is not None:
                    body.close()
        return buffered

    def closing(self, start_response: StartResponse) -> StartResponse:
        """start_response adding ``Connection: close``: the rest of an unread body must not be parsed as
        the next request."""
        return lambda status, headers, *rest: start_response(status, [*headers, ("Connection", "close")], *rest)

    def read_request(self, environ: Environ) -> Optional[WSGIApp]:
        """Spool the body and make it the request's input (with its length); or the refusal to answer."""
        length = environ.get("CONTENT_LENGTH")
        if self.max_request and length and length.isdigit() and int(length) > self.max_request:
            return self.refuse(environ, self.too_large, "body_too_large")
        try:
            body, size = spool(environ["wsgi.input"].read, self.max_request, self.mem_request)
        except TooLarge:
            return self.refuse(environ, self.too_large, "body_too_large")
        except (OSError, ValueError) as exc:  # the client's body failed (cut, bad chunking, the server's limit)
            over = type(exc).__name__ == "BodyTooLarge"  # app.CappedInput: past --max-body-bytes
            return self.refuse(environ, error_response(413, str(exc)) if over else self.bad_body,
                               "body_too_large" if over else "bad_body")
        environ["wsgi.input"] = body
        environ["CONTENT_LENGTH"] = str(size)
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return None

    def refuse(self, environ: Environ, answer: WSGIApp, outcome: str) -> WSGIApp:
        environ[BODY_REFUSED] = True
        mark(environ, self.name, outcome)
        return answer

    def respond(self, app: WSGIApp, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """Call ``app``, read its answer whole, then send it with its length."""
        head: List[Any] = []
        written: List[bytes] = []

        def holding(status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], Any]:
            head[:] = [status, headers]
            return written.append

        result = app(environ, holding)
        buffer = None
        try:
            buffer, size = spool(chunks_of(itertools.chain(written, result)), self.max_response, self.mem_response)
        except TooLarge:
            mark(environ, self.name, "response_too_large")
            return self.answer_too_large(environ, start_response)
        except (GatekeeperError, OSError):
            return self.bad_answer(environ, start_response)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = head
        headers = [(n, v) for n, v in headers if n.lower() not in ("content-length", "transfer-encoding")]
        if int(status[:3]) not in NO_BODY_STATUSES and environ.get("REQUEST_METHOD") != "HEAD":
            headers.append(("Content-Length", str(size)))
        else:
            headers = list(head[1])
        try:
            start_response(status, headers)
        except BaseException:
            buffer.close()
            raise
        return FileBody(buffer)
