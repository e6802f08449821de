"""Traefik's compress: zstd, brotli and gzip of answers worth compressing, streamed.

The encoding is negotiated from ``Accept-Encoding`` (q-values, ``*``, ``q=0`` refuses) before the request goes
on; the upstream is then asked for the identity encoding (``Accept-Encoding`` removed, as Traefik does) and the
answer is compressed here when it is worth it. An answer already encoded, to a ``HEAD``, a 204/206/304, an
upgrade, a gRPC request, an excluded type or a body under ``minResponseBodyBytes`` goes back as it came.

A streamed answer (no ``Content-Length``) is buffered only up to the threshold, then compressed piece by piece,
each piece flushed so an event stream keeps flowing; memory is the threshold plus the encoder's window.

    >>> choose_encoding("gzip;q=0.5, br", ("zstd", "br", "gzip"), "")
    'br'
    >>> choose_encoding("gzip, br;q=0", ("br", "gzip"), ""), choose_encoding(None, ("gzip",), "")
    ('gzip', None)
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Protocol, Sequence, Tuple

import brotli  # type: ignore[import-untyped]  # Google's binding ships no type hints
import zstandard

from gatekeeper.errors import ConfigError, UpstreamAborted
from gatekeeper.middlewares.base import Context, Wrapper
from gatekeeper.options import pick, want_int, want_str, want_str_list
from gatekeeper.wsgi import UPGRADE, Environ, Headers, StartResponse, WSGIApp, error_response

OPTIONS = ("excludedContentTypes", "includedContentTypes", "minResponseBodyBytes", "defaultEncoding", "encodings")
BUILT: Tuple[str, ...] = ("zstd", "br", "gzip")  # Traefik v3's default encodings, in its order of preference
DEFAULT_MIN_BYTES = 1024
MAX_MIN_BYTES = 16 << 20  # the most a streamed answer is buffered to decide: bounded memory per request
GZIP_LEVEL = 6            # zlib's (and Go's) default: Traefik's gzip writer uses it
# 11 (brotli's default) costs many times the CPU for a few percent; on a 10 KB JSON answer quality 4 took
# ~100 us (gzip 6: ~70-90 us) for 2,303 bytes (gzip: 2,460), quality 5 ~165 us for 2,236
BROTLI_QUALITY = 4
BROTLI_WINDOW = 18        # 256 KiB window per stream instead of 4 MiB: memory bounded under many streams
ZSTD_LEVEL = 3            # zstd's default level
ZSTD_PARAMS = zstandard.ZstdCompressionParameters.from_level(ZSTD_LEVEL, window_log=18)  # 256 KiB, not 2 MiB
UNCOMPRESSED_STATUSES = frozenset({"204", "206", "304"})
ABORTED = error_response(502, "the upstream failed in the middle of the body")


class Encoder(Protocol):
    """One answer's compressor: ``piece`` returns what may be sent now (flushed), ``finish`` the rest."""

    def piece(self, data: bytes) -> bytes: ...

    def finish(self, data: bytes = b"") -> bytes: ...


class Gzip:
    """gzip (RFC 1952) through zlib; a sync flush after each piece so a streamed answer keeps flowing."""

    __slots__ = ("zobj",)

    def __init__(self) -> None:
        self.zobj = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def piece(self, data: bytes) -> bytes:
        return self.zobj.compress(data) + self.zobj.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes = b"") -> bytes:
        return self.zobj.compress(data) + self.zobj.flush(zlib.Z_FINISH)


class Brotli:
    """brotli (RFC 7932); ``flush`` after each piece, as for gzip."""

    __slots__ = ("encoder",)

    def __init__(self) -> None:
        self.encoder = brotli.Compressor(quality=BROTLI_QUALITY, lgwin=BROTLI_WINDOW)

    def piece(self, data: bytes) -> bytes:
        return bytes(self.encoder.process(data) + self.encoder.flush())

    def finish(self, data: bytes = b"") -> bytes:
        return bytes(self.encoder.process(data) + self.encoder.finish())


class Zstd:
    """Zstandard (RFC 8878); a block flush after each piece, as for gzip."""

    __slots__ = ("zobj",)

    def __init__(self) -> None:
        self.zobj = zstandard.ZstdCompressor(compression_params=ZSTD_PARAMS).compressobj()

    def piece(self, data: bytes) -> bytes:
        return self.zobj.compress(data) + self.zobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self, data: bytes = b"") -> bytes:
        return self.zobj.compress(data) + self.zobj.flush()


ENCODERS: Dict[str, Callable[[], Encoder]] = {"gzip": Gzip, "br": Brotli, "zstd": Zstd}


# --- configuration -----------------------------------------------------------------------------------------

def media_types(value: Any, where: str) -> Tuple[str, ...]:
    """Content types as compared: lower case, without parameters or spaces.

    >>> media_types(["Text/HTML; charset=utf-8", " application/json "], "compress.excludedContentTypes")
    ('text/html', 'application/json')
    """
    types = tuple(media_type(item) for item in want_str_list(value, where))
    for index, item in enumerate(types):
        kind, slash, sub = item.partition("/")
        if not (kind and slash and sub):
            raise ConfigError(f"{where}[{index}]: expected a media type such as text/html")
    return types


def media_type(content_type: str) -> str:
    """``Text/Html; charset=x`` -> ``text/html``."""
    return content_type.split(";", 1)[0].strip().replace(" ", "").lower()


def read_encodings(fields: Mapping[str, Any]) -> Tuple[Tuple[str, ...], str]:
    """(encodings in order of preference, defaultEncoding or ``""``); unknown names refused."""
    encodings = BUILT
    if "encodings" in fields:
        encodings = tuple(e.strip().lower() for e in want_str_list(fields["encodings"], "compress.encodings"))
        if not encodings:
            raise ConfigError("compress.encodings: at least one encoding is required")
    for index, name in enumerate(encodings):
        if name not in BUILT:
            raise ConfigError(f"compress.encodings[{index}]: {name!r} is not an encoding Traefik knows "
                              f"(use {', '.join(BUILT)})")
    default = ""
    if "defaultEncoding" in fields:
        default = want_str(fields["defaultEncoding"], "compress.defaultEncoding").strip().lower()
        if default not in encodings:
            raise ConfigError(f"compress.defaultEncoding: {default!r} is not one of the encodings "
                              f"({', '.join(encodings)})")
    return encodings, default


# --- negotiation -------------------------------------------------------------------------------------------

def accepted(header: str) -> Dict[str, float]:
    """``Accept-Encoding`` as {coding: q}; a garbled q counts as 0 (refused), as a cautious reading.

    >>> accepted("gzip;q=0.8, BR, *;q=0, x;q=abc")
    {'gzip': 0.8, 'br': 1.0, '*': 0.0, 'x': 0.0}
    """
    found: Dict[str, float] = {}
    for item in header.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        weight = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    weight = 0.0
        found[name] = weight
    return found


def choose_encoding(header: Optional[str], encodings: Sequence[str], default: str) -> Optional[str]:
    """The encoding to answer with, or None: an absent header means ``default``, an empty one none; the
    highest q wins, an encoding named outright before ``*`` at the same q, then the configured order. When
    ``*`` wins, ``default`` (else the first encoding the client did not refuse by name)."""
    if header is None:
        return default or None
    weights = accepted(header)
    ranked = sorted(((weights[name], 1, -rank, name) for rank, name in enumerate(encodings)
                     if weights.get(name, 0.0) > 0), reverse=True)
    star = weights.get("*", 0.0)
    if star > 0 and (not ranked or ranked[0][0] < star):
        choices = ([default] if default else []) + list(encodings)
        return next((name for name in choices if name not in weights), None)
    return ranked[0][3] if ranked else None


# --- the answer --------------------------------------------------------------------------------------------

class Head:
    """The answer's status and headers as the app gave them, held until compression is decided."""

    __slots__ = ("exc_info", "headers", "passed", "start_response", "status", "writer")

    def __init__(self, start_response: StartResponse) -> None:
        self.start_response = start_response
        self.status: Optional[str] = None
        self.headers: Headers = []
        self.exc_info: Any = None
        self.passed = False  # the app used write(): the head went on as it was
        self.writer: Optional[Callable[[bytes], Any]] = None

    def start(self, status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], Any]:
        self.status, self.headers, self.exc_info = status, headers, exc_info
        return self.write

    def write(self, data: bytes) -> Any:
        """The legacy ``write()``: nothing can be compressed any more; the head goes on unchanged."""
        if self.writer is None:
            self.passed = True
            self.send(self.headers)
        assert self.writer is not None
        return self.writer(data)

    def send(self, headers: Headers) -> None:
        self.writer = self.start_response(self.status, headers, self.exc_info)

    def header(self, name: str) -> Optional[str]:
        return next((v for k, v in self.headers if k.lower() == name), None)


class Settings:
    """What one compress middleware decided at load time."""

    __slots__ = ("default", "encodings", "excluded", "included", "min_bytes")

    def __init__(self, options: Mapping[str, Any]) -> None:
        fields = pick(options, OPTIONS, "compress")
        if "excludedContentTypes" in fields and "includedContentTypes" in fields:
            raise ConfigError("compress: excludedContentTypes and includedContentTypes are mutually exclusive")
        self.excluded = media_types(fields.get("excludedContentTypes", []), "compress.excludedContentTypes")
        self.included = media_types(fields.get("includedContentTypes", []), "compress.includedContentTypes")
        self.min_bytes = want_int(fields.get("minResponseBodyBytes", DEFAULT_MIN_BYTES),
                                  "compress.minResponseBodyBytes", minimum=0)
        if self.min_bytes > MAX_MIN_BYTES:
            raise ConfigError(f"compress.minResponseBodyBytes: at most {MAX_MIN_BYTES} (a streamed answer is "
                              "held in memory up to it)")
        self.encodings, self.default = read_encodings(fields)

    def wants(self, head: Head) -> bool:
        """Whether the answer's head allows compression (the body's size is decided after)."""
        if head.status is None or head.passed or head.status[:3] in UNCOMPRESSED_STATUSES \
                or head.status[:1] == "1" or head.header("content-encoding") is not None:
            return False
        content_type = media_type(head.header("content-type") or "")
        if self.included:
            return content_type in self.included
        return content_type not in self.excluded


def compress(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's compress middleware (module docstring)."""
    settings = Settings(options)

    def wrap(app: WSGIApp) -> WSGIApp:
        def compressing(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            encoding = request_encoding(environ, settings)
            if encoding is None:
                return app(environ, start_response)
            environ.pop("HTTP_ACCEPT_ENCODING", None)  # the upstream sends identity; this side encodes
            head = Head(start_response)
            try:
                return answer(head, app(environ, head.start), settings, encoding)
            except UpstreamAborted:  # while the threshold was read: nothing was sent, a clean 502 still can be
                if head.writer is not None:
                    raise
                return ABORTED(environ, start_response)
        return compressing
    return wrap


def request_encoding(environ: Environ, settings: Settings) -> Optional[str]:
    """The negotiated encoding, or None when this request's answer is never compressed."""
    if environ.get("REQUEST_METHOD") == "HEAD" or environ.get(UPGRADE) is not None \
            or "HTTP_UPGRADE" in environ or str(environ.get("CONTENT_TYPE", "")).startswith("application/grpc"):
        return None
    return choose_encoding(environ.get("HTTP_ACCEPT_ENCODING"), settings.encodings, settings.default)


def answer(head: Head, result: Iterable[bytes], settings: Settings, encoding: str) -> Iterable[bytes]:
    """Send the head (changed when compressing) and return the body to iterate."""
    if head.passed:
        return result
    try:
        pieces = iter(result)
        first: List[bytes] = []
        if head.status is None:  # a generator app calls start_response on its first step
            first = [next(pieces, b"")]
        if not settings.wants(head):
            head.send(head.headers)
            return Body(first, pieces, result, None) if first else result
        length = head.header("content-length")
        if length is not None and length.strip().isdigit():
            if int(length) < settings.min_bytes:
                head.send(head.headers)
                return Body(first, pieces, result, None) if first else result
        elif not fill(first, pieces, settings.min_bytes):  # the whole body is read, and it is small
            close(result)
            head.send(head.headers)
            return first
        if isinstance(result, list):  # the whole body is here: one compressed piece, with its length
            data = ENCODERS[encoding]().finish(b"".join(result))
            head.send(compressed_headers(head.headers, encoding, len(data)))
            return [data]
        head.send(compressed_headers(head.headers, encoding, None))
        return Body(first, pieces, result, ENCODERS[encoding]())
    except BaseException:
        close(result)
        raise


def fill(buffered: List[bytes], pieces: Iterator[bytes], threshold: int) -> bool:
    """Read pieces into ``buffered`` until they reach ``threshold`` bytes (True) or the body ends (False)."""
    size = sum(len(piece) for piece in buffered)
    while size < threshold:
        piece = next(pieces, None)
        if piece is None:
            return False
        buffered.append(piece)
        size += len(piece)
    return True


def compressed_headers(headers: Headers, encoding: str, length: Optional[int]) -> Headers:
    """The head of the compressed answer: Content-Encoding, Vary, the new length (or none), a weak ETag (it
    names another representation now), no Accept-Ranges (ranges of the encoded bytes are not served).

    >>> compressed_headers([("ETag", '"v1"'), ("Content-Length", "9"), ("Vary", "Origin")], "gzip", None)
    [('ETag', 'W/"v1"'), ('Vary', 'Origin, Accept-Encoding'), ('Content-Encoding', 'gzip')]
    """
    out: Headers = []
    vary_seen = False
    for name, value in headers:
        lower = name.lower()
        if lower in ("content-length", "accept-ranges"):
            continue
        shown = value
        if lower == "etag" and value.startswith('"'):
            shown = "W/" + value
        elif lower == "vary":
            tokens = {t.strip().lower() for t in value.split(",")}
            vary_seen = True
            if "accept-encoding" not in tokens and "*" not in tokens:
                shown = f"{value}, Accept-Encoding"
        out.append((name, shown))
    out.append(("Content-Encoding", encoding))
    if not vary_seen:
        out.append(("Vary", "Accept-Encoding"))
    if length is not None:
        out.append(("Content-Length", str(length)))
    return out


class Body:
    """The body to send: the pieces read to decide, then the rest, compressed when an encoder is given.
    ``close()`` closes the app's iterable (the upstream connection goes back or is closed)."""

    __slots__ = ("encoder", "first", "pieces", "source")

    def __init__(self, first: List[bytes], pieces: Iterator[bytes], source: Iterable[bytes],
                 encoder: Optional[Encoder]) -> None:
        self.first, self.pieces, self.source, self.encoder = first, pieces, source, encoder

    def __iter__(self) -> Iterator[bytes]:
        encoder = self.encoder
        if encoder is None:
            yield from self.first
            yield from self.pieces
            return
        data = encoder.piece(b"".join(self.first)) if self.first else b""
        if data:
            yield data
        for piece in self.pieces:
            data = encoder.piece(piece) if piece else b""
            if data:
                yield data
        yield encoder.finish()

    def close(self) -> None:
        close(self.source)


def close(result: Iterable[bytes]) -> None:
    closer = getattr(result, "close", None)
    if closer is not None:
        closer()
