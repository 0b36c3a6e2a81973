"""Mirror the upstream's short-lived image into the private bucket, streaming, with a guard on what is fetched.

The guard refuses, before any byte is fetched:
- a URL that is not https (http only when the local stack allows it) or whose host is not on the allowlist;
- a host that resolves to a non-public address (private, loopback, link-local, reserved...). The check runs
  on the address the socket actually connects to, so DNS rebinding between check and connect is impossible;
- a redirect that leaves the allowlist (redirects are followed by hand, each hop checked).
While streaming it refuses a body that is not an image (PNG/JPEG/WebP magic bytes) or is larger than the limit.

Memory stays bounded: the body is read in chunks of at most 1 MiB into one multipart part buffer (5 MiB, the S3
minimum part size, plus at most one chunk), uploaded as is when full: a 64 MB image needs ~6 MiB, not 64.
Small images (one part) take a single PutObject. A conversion (``output_format``) cannot stream: it holds the
source (at most the size cap), one decoded frame of at most 2048×2048 and the converted file
(``benchmarks/convert_memory.py`` measures it).

With content moderation on, ``screen`` sees the whole image before its PutObject: the upstream's own file (before a
conversion, which moderation might not read, such as WebP) or the file stored (at most one part: moderation takes
at most 4 MB). A blocked image is never written, so there is nothing to fetch, remove or quarantine.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import requests
from aws_lambda_powertools import Logger
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import connection as urllib3_connection

from imagegen.adapters.http import BodyTooLargeError, DeadlineExceededError, IncompleteBodyError, iter_body
from imagegen.addresses import Network, is_public_address, parse_networks
from imagegen.budget import Deadline
from imagegen.errors import ImageRejectedError, UpstreamTimeoutError
from imagegen.models import StoredImage

if TYPE_CHECKING:
    from imagegen.adapters.convert import Conversion

logger = Logger(child=True)
S3_MIN_PART_BYTES = 5 * 1024 * 1024
MAX_REDIRECTS = 3
SNIFF_BYTES = 64 * 1024


# ---------------------------------------------------------------------------------------------------- URL guard
class AddressRefusedError(Exception):
    """A host resolved only to non-public addresses. Deliberately not an OSError: urllib3 must not retry it."""


class _PublicOnlyConnectionMixin:
    """Connect only to public addresses: resolve, filter, and connect to the address that was checked."""

    allowed_networks: tuple[Network, ...] = ()
    _dns_host: str
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(self._dns_host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise AddressRefusedError(f"image host {self.host!r} does not resolve") from exc
        addresses = [info[4][0] for info in infos]
        public = [address for address in addresses if is_public_address(address, self.allowed_networks)]
        if not public:
            raise AddressRefusedError(f"image host {self.host!r} resolves to a non-public address")
        last_error: OSError | None = None
        for address in public:
            try:
                return urllib3_connection.create_connection(
                    (address, self.port), self.timeout, self.source_address, self.socket_options
                )
            except OSError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error


class _PublicHTTPConnection(_PublicOnlyConnectionMixin, HTTPConnection):
    pass


class _PublicHTTPSConnection(_PublicOnlyConnectionMixin, HTTPSConnection):
    pass


def _pool_class(base: type[HTTPConnectionPool], connection: type[Any], allowed: tuple[Network, ...]) -> type[Any]:
    """A pool whose connections also accept ``allowed`` (a subclass: urllib3 pools take no per-pool setting)."""
    bound = type(connection.__name__, (connection,), {"allowed_networks": allowed})
    return type(f"Public{base.__name__}", (base,), {"ConnectionCls": bound})


class PublicOnlyAdapter(HTTPAdapter):
    """A requests adapter whose connections can only reach public IP addresses (and ``allowed_networks``)."""

    def __init__(self, allowed_networks: tuple[Network, ...] = (), **kwargs: Any) -> None:
        self._pool_classes = {
            "http": _pool_class(HTTPConnectionPool, _PublicHTTPConnection, allowed_networks),
            "https": _pool_class(HTTPSConnectionPool, _PublicHTTPSConnection, allowed_networks),
        }
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self._pool_classes)


def guarded_session(allowed_private_networks: Iterable[str] = ()) -> requests.Session:
    """A session that connects only to public addresses, checked on the socket it opens. The local stack adds
    loopback (``allowed_private_networks``); link-local (cloud metadata), RFC 1918 and the rest stay refused."""
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment for fetching upstream content
    adapter = PublicOnlyAdapter(parse_networks(allowed_private_networks))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


@dataclass(frozen=True)
class UrlGuard:
    host_allowlist: tuple[str, ...]
    allow_http: bool = False

    def check(self, url: str) -> None:
        parts = urlsplit(url)
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parts.scheme not in schemes:
            raise ImageRejectedError(f"image URL scheme {parts.scheme or '(none)'!r} is not allowed (https only)")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise ImageRejectedError("image URL has no host")
        if parts.username or parts.password:
            raise ImageRejectedError("image URL must not carry credentials")
        if not any(fnmatchcase(host, pattern.lower()) for pattern in self.host_allowlist):
            raise ImageRejectedError(f"image host {host!r} is not on the allowlist")


# ---------------------------------------------------------------------------------------------------- sniffing
Screen = Callable[[bytes, "ImageKind"], None]  # sees a whole image before it is stored; raises to refuse it


class _Screening:
    """One image's moderation: done on the upstream's file when a conversion reads it whole, else on the stored."""

    def __init__(self, screen: Screen) -> None:
        self.screen = screen
        self.done = False

    def whole(self, data: bytes, kind: ImageKind) -> None:
        self.screen(data, kind)  # raises to refuse
        self.done = True


@dataclass(frozen=True)
class ImageKind:
    content_type: str
    extension: str
    width: int | None
    height: int | None


def sniff_image(head: bytes) -> ImageKind | None:
    """Identify PNG, JPEG or WebP from the first bytes, with the dimensions when the header holds them."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        width = height = None
        if len(head) >= 24 and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
        return ImageKind("image/png", "png", width, height)
    if head.startswith(b"\xff\xd8\xff"):
        width, height = _jpeg_size(head)
        return ImageKind("image/jpeg", "jpg", width, height)
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        width, height = _webp_size(head)
        return ImageKind("image/webp", "webp", width, height)
    return None


def _jpeg_size(data: bytes) -> tuple[int | None, int | None]:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None, None


def _webp_size(data: bytes) -> tuple[int | None, int | None]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None, None


# ---------------------------------------------------------------------------------------------------- mirror
class ImageMirror:
    def __init__(
        self,
        s3_client: Any,
        bucket: str,
        guard: UrlGuard,
        *,
        session: requests.Session | None = None,
        max_bytes: int = 32 * 1024 * 1024,
        part_bytes: int = S3_MIN_PART_BYTES,
        connect_timeout_s: float = 3.05,
        read_timeout_s: float = 10.0,
    ) -> None:
        self._s3 = s3_client
        self._bucket = bucket
        self._guard = guard
        self._session = session or guarded_session()
        self._max_bytes = max_bytes
        self._part_bytes = max(part_bytes, S3_MIN_PART_BYTES)
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s

    def mirror(
        self,
        url: str,
        key_stem: str,
        metadata: Mapping[str, str],
        deadline: Deadline,
        *,
        conversion: Conversion | None = None,
        screen: Screen | None = None,
    ) -> StoredImage:
        """Fetch ``url`` and store it at ``key_stem`` + ``.<ext>``; return what was stored. With ``conversion`` the
        image is stored in that format (the extension, content type, size and digest are the stored file's).
        ``screen`` (content moderation) sees the whole image before anything is written and raises to refuse it."""
        screening = _Screening(screen) if screen is not None else None
        response = self._open(url, deadline)
        with response:
            try:
                chunks = iter_body(response, deadline, self._max_bytes)
                if conversion is not None:
                    chunks = self._converted(chunks, conversion, screening)
                return self._store(chunks, key_stem, metadata, screening)
            except BodyTooLargeError as exc:
                raise ImageRejectedError(f"image is too large: {exc}") from exc
            except DeadlineExceededError as exc:
                raise UpstreamTimeoutError("the image download did not finish within the request budget") from exc
            except IncompleteBodyError as exc:
                raise ImageRejectedError("the image download was truncated") from exc

    def _open(self, url: str, deadline: Deadline) -> requests.Response:
        for _ in range(MAX_REDIRECTS + 1):
            self._guard.check(url)
            if deadline.expired():
                raise UpstreamTimeoutError("no time left to download the image within the request budget")
            read_timeout = max(0.1, min(self._read_timeout_s, deadline.remaining()))
            try:
                response = self._session.get(
                    url,
                    stream=True,
                    allow_redirects=False,
                    timeout=(min(self._connect_timeout_s, read_timeout), read_timeout),
                    headers={"Accept": "image/png, image/jpeg, image/webp"},
                )
            except AddressRefusedError as exc:
                raise ImageRejectedError(str(exc)) from exc
            except requests.exceptions.Timeout as exc:
                raise UpstreamTimeoutError("the image host did not answer within the request budget") from exc
            except requests.exceptions.RequestException as exc:
                raise ImageRejectedError("could not download the image from the upstream's URL") from exc
            if response.is_redirect:
                location = response.headers.get("Location", "")
                response.close()
                url = urljoin(url, location)
                continue
            if response.status_code != 200:
                response.close()
                raise ImageRejectedError(f"the image host answered HTTP {response.status_code}")
            return response
        raise ImageRejectedError(f"more than {MAX_REDIRECTS} redirects while downloading the image")

    def _converted(
        self, chunks: Iterator[bytes], conversion: Conversion, screening: _Screening | None = None
    ) -> Iterator[bytes]:
        """The converted file. The header is read first: a source already in the asked format (and no quality
        asked for) streams on as it is; any other is read whole (decoding needs the whole file), converted, and
        only the converted file goes on."""
        head = bytearray()
        for chunk in chunks:
            head += chunk
            if len(head) >= SNIFF_BYTES:
                break
        kind = self._identify(head)
        if not conversion.needed_for(kind.content_type):
            yield head
            yield from chunks
            return
        from imagegen.adapters.convert import convert  # a conversion only: never at cold start

        parts = [bytes(head), *chunks]
        del head
        source = b"".join(parts)  # one bytes object: Pillow reads it through a BytesIO without another copy
        del parts
        if screening is not None:
            screening.whole(source, kind)  # the upstream's own file, before the conversion
        yield convert(source, conversion, width=kind.width, height=kind.height)

    def _store(
        self, chunks: Iterator[bytes], key_stem: str, metadata: Mapping[str, str], screening: _Screening | None = None
    ) -> StoredImage:
        buffer = bytearray()
        kind: ImageKind | None = None
        digest = hashlib.sha256()
        total = 0
        key = ""
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for chunk in chunks:
                digest.update(chunk)
                total += len(chunk)
                buffer += chunk
                if kind is None:
                    if len(buffer) < SNIFF_BYTES and total < self._max_bytes:
                        continue  # keep reading until the header is in hand
                    kind = self._identify(buffer)
                    key = f"{key_stem}.{kind.extension}"
                if len(buffer) >= self._part_bytes:
                    # The whole buffer is the part (botocore takes a bytearray as is): no slice, no copy.
                    if upload_id is None:
                        if screening is not None and not screening.done:  # it must see the whole image first
                            raise ImageRejectedError(
                                "the image is too large to be screened by content moderation: refused"
                            )
                        upload_id = self._s3.create_multipart_upload(
                            Bucket=self._bucket, Key=key, ContentType=kind.content_type, Metadata=dict(metadata)
                        )["UploadId"]
                    parts.append(self._upload_part(key, upload_id, len(parts) + 1, buffer))
                    buffer = bytearray()
            if kind is None:
                kind = self._identify(buffer)
                key = f"{key_stem}.{kind.extension}"
            sha256 = digest.hexdigest()
            full_metadata = {**metadata, "sha256": sha256, "bytes": str(total)}
            if upload_id is None:
                if screening is not None and not screening.done:
                    screening.whole(bytes(buffer), kind)  # raises to refuse: nothing has been written
                self._s3.put_object(
                    Bucket=self._bucket,
                    Key=key,
                    Body=buffer,
                    ContentType=kind.content_type,
                    Metadata=full_metadata,
                )
            else:
                if buffer:
                    parts.append(self._upload_part(key, upload_id, len(parts) + 1, buffer))
                self._s3.complete_multipart_upload(
                    Bucket=self._bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
                upload_id = None
                # Size and digest are known only now: record them with a server-side self-copy (no bytes move
                # through the function). Only images over one part (5 MiB) pay for it.
                self._s3.copy_object(
                    Bucket=self._bucket,
                    Key=key,
                    CopySource={"Bucket": self._bucket, "Key": key},
                    MetadataDirective="REPLACE",
                    ContentType=kind.content_type,
                    Metadata=full_metadata,
                )
        finally:
            if upload_id is not None:
                try:
                    self._s3.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
                except Exception:  # noqa: BLE001 - the original error matters more; the lifecycle rule cleans up
                    logger.warning("could not abort a multipart upload", key=key)
        return StoredImage(
            bucket=self._bucket,
            key=key,
            content_type=kind.content_type,  # type: ignore[arg-type]
            bytes=total,
            sha256=sha256,
            width=kind.width,
            height=kind.height,
        )

    def _upload_part(self, key: str, upload_id: str, number: int, body: bytearray) -> dict[str, Any]:
        etag = self._s3.upload_part(Bucket=self._bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": etag["ETag"]}

    @staticmethod
    def _identify(head: bytearray) -> ImageKind:
        kind = sniff_image(bytes(head[:SNIFF_BYTES]))
        if kind is None:
            raise ImageRejectedError("the upstream's output is not an image (PNG, JPEG or WebP expected)")
        return kind
