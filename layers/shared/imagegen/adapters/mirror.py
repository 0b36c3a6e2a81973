"""Mirror the upstream's short-lived image into the private bucket, streaming, behind the network guard.

Before any byte is fetched the network guard (``adapters/netguard.py``) refuses a URL that is not https (http only
when the local stack allows it) or whose host is not on the allowlist, a host that resolves to a non-public address
(checked on the address the socket connects to), and a redirect that leaves the allowlist (each hop is checked).
This module words those refusals for its callers (``image_rejected``, "image host ..."). While streaming it refuses
a body that is not an image (PNG/JPEG/WebP magic bytes, ``adapters/sniff.py``) or is larger than the limit.

Memory stays bounded: the body is read in chunks of at most 1 MiB into one multipart part buffer (5 MiB, the S3
minimum part size, plus at most one chunk), uploaded as is when full: a 64 MB image needs ~6 MiB, not 64.
Small images (one part) take a single PutObject. A conversion (``output_format``) cannot stream: it holds the
source (at most the size cap), one decoded frame of at most 2048×2048 and the converted file
(``benchmarks/convert_memory.py`` measures it).

With content moderation on, ``screen`` sees the whole image before its PutObject: the upstream's own file (before a
conversion, which moderation might not read, such as WebP) or the file stored (at most one part: moderation takes
at most 4 MB). A blocked image is never written, so there is nothing to fetch, remove or quarantine.

Over ~300 lines on purpose: fetch, check, convert and store are one pipeline over one response (the budget, the
size cap and the moderation screen run through all of them, and a failure anywhere aborts the upload), and its two
helpers (``_Body``, ``_MultipartUpload``) serve nothing else. What can stand alone lives next to it: the network guard
(``netguard.py``), the sniffing (``sniff.py``), the conversion (``convert.py``) and the bounded reads (``http.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, assert_never

import requests
from aws_lambda_powertools import Logger

from imagegen.adapters.http import BodyTooLargeError, DeadlineExceededError, IncompleteBodyError, iter_body
from imagegen.adapters.netguard import Refusal, RefusedError, UrlGuard, get_following_redirects, guarded_session
from imagegen.adapters.sniff import SNIFF_BYTES, ImageKind, sniff_image
from imagegen.budget import Deadline
from imagegen.errors import ImageRejectedError, UpstreamTimeoutError
from imagegen.models import StoredImage

if TYPE_CHECKING:
    from imagegen.adapters.convert import Conversion

# ImageKind and sniff_image are re-exported: the generation service and the tests import them from the mirror.
__all__ = ["S3_MIN_PART_BYTES", "ImageKind", "ImageMirror", "Screen", "image_refusal", "sniff_image"]

logger = Logger(child=True)
S3_MIN_PART_BYTES = 5 * 1024 * 1024
ACCEPT = {"Accept": "image/png, image/jpeg, image/webp"}


def image_refusal(exc: RefusedError) -> ImageRejectedError:
    """The network guard's refusal in the mirror's words: what a caller sees in a 502 ``image_rejected``."""
    match exc.reason:
        case Refusal.SCHEME:
            text = f"image URL scheme {exc.value or '(none)'!r} is not allowed (https only)"
        case Refusal.NO_HOST:
            text = "image URL has no host"
        case Refusal.CREDENTIALS:
            text = "image URL must not carry credentials"
        case Refusal.HOST_NOT_ALLOWED:
            text = f"image host {exc.value!r} is not on the allowlist"
        case Refusal.UNRESOLVABLE:
            text = f"image host {exc.value!r} does not resolve"
        case Refusal.NON_PUBLIC_ADDRESS:
            text = f"image host {exc.value!r} resolves to a non-public address"
        case Refusal.TOO_MANY_REDIRECTS:
            text = f"more than {exc.value} redirects while downloading the image"
        case _:
            assert_never(exc.reason)
    return ImageRejectedError(text)


Screen = Callable[[bytes, "ImageKind"], None]  # sees a whole image before it is stored; raises to refuse it


class _Screening:
    """One image's moderation: done on the upstream's file when a conversion reads it whole, else on the stored."""

    def __init__(self, screen: Screen) -> None:
        self.screen = screen
        self.done = False

    def whole(self, data: bytes, kind: ImageKind) -> None:
        self.screen(data, kind)  # raises to refuse
        self.done = True


class _Body:
    """The body as it arrives: its digest and size so far, and the bytes not yet uploaded (one part at most)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.digest = hashlib.sha256()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.total += len(chunk)
        self.buffer += chunk

    def take(self) -> bytearray:
        """The buffered bytes, as they are (botocore takes a bytearray: no slice, no copy); a new buffer starts."""
        part, self.buffer = self.buffer, bytearray()
        return part


class _MultipartUpload:
    """One object's multipart upload, started on its first part. Unless completed, ``close`` aborts it."""

    def __init__(self, s3_client: Any, bucket: str, key: str) -> None:
        self._s3 = s3_client
        self._bucket = bucket
        self.key = key
        self.upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._completed = False

    @property
    def started(self) -> bool:
        return self.upload_id is not None

    def start(self, content_type: str, metadata: Mapping[str, str]) -> None:
        answer = self._s3.create_multipart_upload(
            Bucket=self._bucket, Key=self.key, ContentType=content_type, Metadata=dict(metadata)
        )
        self.upload_id = answer["UploadId"]

    def add(self, body: bytearray) -> None:
        number = len(self._parts) + 1
        answer = self._s3.upload_part(
            Bucket=self._bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body
        )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def complete(self) -> None:
        self._s3.complete_multipart_upload(
            Bucket=self._bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self._parts}
        )
        self._completed = True

    def close(self) -> None:
        """Abort an upload that was started and not completed: no parts are left behind (nor billed)."""
        if self.upload_id is None or self._completed:
            return
        try:
            self._s3.abort_multipart_upload(Bucket=self._bucket, Key=self.key, UploadId=self.upload_id)
        except Exception:  # noqa: BLE001 - the original error matters more; the lifecycle rule cleans up
            logger.warning("could not abort a multipart upload", key=self.key)


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

    # ------------------------------------------------------------------------------------------ fetch
    def _open(self, url: str, deadline: Deadline) -> requests.Response:
        """The image host's 200, its body not read yet: every hop checked by the guard, each within the budget."""

        def hop_timeouts() -> tuple[float, float]:
            if deadline.expired():
                raise UpstreamTimeoutError("no time left to download the image within the request budget")
            read_timeout = max(0.1, min(self._read_timeout_s, deadline.remaining()))
            return min(self._connect_timeout_s, read_timeout), read_timeout

        try:
            response = get_following_redirects(self._session, url, self._guard, timeout=hop_timeouts, headers=ACCEPT)
        except RefusedError as exc:
            raise image_refusal(exc) from exc
        except requests.exceptions.Timeout as exc:
            raise UpstreamTimeoutError("the image host did not answer within the request budget") from exc
        except requests.exceptions.RequestException as exc:
            raise ImageRejectedError("could not download the image from the upstream's URL") from exc
        if response.status_code != 200:
            response.close()
            raise ImageRejectedError(f"the image host answered HTTP {response.status_code}")
        return response

    # ------------------------------------------------------------------------------------------ convert
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

    # ------------------------------------------------------------------------------------------ store
    def _store(
        self, chunks: Iterator[bytes], key_stem: str, metadata: Mapping[str, str], screening: _Screening | None = None
    ) -> StoredImage:
        """Check the head, then store the body as it arrives: one PutObject when it fits in one part, else a
        multipart upload (aborted on any failure) whose size and digest are recorded once it is complete."""
        body = _Body()
        kind = self._check_head(chunks, body)
        upload = _MultipartUpload(self._s3, self._bucket, f"{key_stem}.{kind.extension}")
        try:
            for part in self._full_parts(chunks, body):
                if not upload.started:
                    self._refuse_unscreened(screening)
                    upload.start(kind.content_type, metadata)
                upload.add(part)
            if upload.started:
                self._finish_multipart(upload, body, kind, metadata)
            else:
                self._put_whole(upload.key, body, kind, metadata, screening)
        finally:
            upload.close()
        return StoredImage(
            bucket=self._bucket,
            key=upload.key,
            content_type=kind.content_type,  # type: ignore[arg-type]
            bytes=body.total,
            sha256=body.digest.hexdigest(),
            width=kind.width,
            height=kind.height,
        )

    def _check_head(self, chunks: Iterator[bytes], body: _Body) -> ImageKind:
        """Read until the header is in hand (or the body ended, or reached the size cap), then identify it: a body
        that is not an image is refused before anything is written."""
        for chunk in chunks:
            body.add(chunk)
            if len(body.buffer) >= SNIFF_BYTES or body.total >= self._max_bytes:
                break
        return self._identify(body.buffer)

    def _full_parts(self, chunks: Iterator[bytes], body: _Body) -> Iterator[bytearray]:
        """Each time the buffer reaches the part size, the buffer itself (no copy); what is left stays in ``body``."""
        while True:
            if len(body.buffer) >= self._part_bytes:
                yield body.take()
            chunk = next(chunks, None)
            if chunk is None:
                return
            body.add(chunk)

    @staticmethod
    def _refuse_unscreened(screening: _Screening | None) -> None:
        """Moderation must see the whole image before any of it is written: an image over one part cannot be."""
        if screening is not None and not screening.done:
            raise ImageRejectedError("the image is too large to be screened by content moderation: refused")

    def _put_whole(
        self, key: str, body: _Body, kind: ImageKind, metadata: Mapping[str, str], screening: _Screening | None
    ) -> None:
        """One part or less: screened (when moderation is on and has not seen it yet), then one PutObject."""
        if screening is not None and not screening.done:
            screening.whole(bytes(body.buffer), kind)  # raises to refuse: nothing has been written
        self._s3.put_object(
            Bucket=self._bucket,
            Key=key,
            Body=body.buffer,
            ContentType=kind.content_type,
            Metadata=_with_digest(metadata, body),
        )

    def _finish_multipart(
        self, upload: _MultipartUpload, body: _Body, kind: ImageKind, metadata: Mapping[str, str]
    ) -> None:
        """The last part, the completion, then the size and digest, known only now, recorded with a server-side
        self-copy (no bytes move through the function). Only images over one part (5 MiB) pay for it."""
        if body.buffer:
            upload.add(body.take())
        upload.complete()
        self._s3.copy_object(
            Bucket=self._bucket,
            Key=upload.key,
            CopySource={"Bucket": self._bucket, "Key": upload.key},
            MetadataDirective="REPLACE",
            ContentType=kind.content_type,
            Metadata=_with_digest(metadata, body),
        )

    @staticmethod
    def _identify(head: bytearray) -> ImageKind:
        kind = sniff_image(bytes(head[:SNIFF_BYTES]))
        if kind is None:
            raise ImageRejectedError("the upstream's output is not an image (PNG, JPEG or WebP expected)")
        return kind


def _with_digest(metadata: Mapping[str, str], body: _Body) -> dict[str, str]:
    return {**metadata, "sha256": body.digest.hexdigest(), "bytes": str(body.total)}
