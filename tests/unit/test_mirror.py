"""The image mirror: image sniffing, streaming into S3 (moto) from a loopback host, and the network guard's refusals
in the mirror's words (the guard itself: test_netguard.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import socket
import struct
import tracemalloc
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from imagegen.adapters.convert import Conversion
from imagegen.adapters.http import CHUNK_BYTES
from imagegen.adapters.mirror import S3_MIN_PART_BYTES, ImageKind, ImageMirror, image_refusal, sniff_image
from imagegen.adapters.netguard import Refusal, RefusedError, UrlGuard, guarded_session
from imagegen.budget import Deadline
from imagegen.errors import ImageRejectedError, UpstreamTimeoutError
from moto import mock_aws

MIB = 1024 * 1024
BUCKET = "images-unit-test"
STEM = "images/2024/08/15/img_0123456789abcdef0123456789abcdef"
METADATA = {"image-id": "img_0123456789abcdef0123456789abcdef", "seed": "15"}
R2_GUARD = UrlGuard(("pub-*.r2.dev",))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------- image builders
def _filler(size: int) -> bytes:
    return random.Random(size).randbytes(max(0, size))


def png(width: int = 640, height: int = 480, size: int = 0) -> bytes:
    head = PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", width, height) + b"\x08\x06\0\0\0"
    head += b"\x12\x34\x56\x78"  # CRC (not checked by the sniffer)
    return head + _filler(size - len(head))


def jpeg(width: int = 800, height: int = 600, size: int = 0, sof: int = 0xC0) -> bytes:
    soi = b"\xff\xd8"
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    dqt = b"\xff\xdb" + struct.pack(">H", 67) + b"\0" + bytes(range(64))
    components = b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sof_segment = bytes([0xFF, sof]) + struct.pack(">HBHHB", 17, 8, height, width, 3) + components
    head = soi + app0 + dqt + sof_segment
    return head + _filler(size - len(head))


def webp_vp8(width: int = 320, height: int = 240, scale_bits: int = 0) -> bytes:
    frame = b"\x9d\x01\x2a" + struct.pack("<HH", width | scale_bits << 14, height | scale_bits << 14)
    chunk = b"VP8 " + struct.pack("<I", 10 + len(frame)) + b"\x50\x02\x00" + frame + _filler(16)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def webp_vp8l(width: int = 1024, height: int = 768) -> bytes:
    bits = (width - 1) | (height - 1) << 14
    chunk = b"VP8L" + struct.pack("<I", 5 + 16) + b"\x2f" + struct.pack("<I", bits) + _filler(16)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def webp_vp8x(width: int = 2048, height: int = 1536) -> bytes:
    body = b"\x10\0\0\0" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(body)) + body + _filler(16)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


# ---------------------------------------------------------------------------------------------------- guard refusals
def test_image_mirror_refuses_a_host_resolving_to_the_metadata_address(resolve_to: Any) -> None:
    # Given an allowlisted name that resolves to the instance metadata address (DNS rebinding)
    recorder = resolve_to("169.254.169.254")
    mirror = ImageMirror(object(), BUCKET, R2_GUARD, session=guarded_session())
    # When the mirror fetches it
    with pytest.raises(ImageRejectedError, match="non-public"):
        mirror.mirror("https://pub-rebind.r2.dev/x.png", STEM, METADATA, Deadline.after(5))
    # Then no connection was even attempted
    assert recorder.addresses == []


def test_image_mirror_connect_timeout_is_an_upstream_timeout(resolve_to: Any) -> None:
    # Given a public image host that never completes the TCP handshake
    recorder = resolve_to("93.184.216.34", error=TimeoutError("timed out"))
    mirror = ImageMirror(object(), BUCKET, R2_GUARD, session=guarded_session())
    # When the mirror fetches from it, Then it is a (retryable) timeout, not a refused image
    with pytest.raises(UpstreamTimeoutError):
        mirror.mirror("https://pub-slow.r2.dev/x.png", STEM, METADATA, Deadline.after(5))
    assert recorder.addresses == [("93.184.216.34", 443)]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1/x.png", "image URL scheme 'ftp' is not allowed (https only)"),
        ("//127.0.0.1/x.png", "image URL scheme '(none)' is not allowed (https only)"),
        ("http:///x.png", "image URL has no host"),
        ("http://user:pw@127.0.0.1/x.png", "image URL must not carry credentials"),
        ("http://images.example.com/x.png", "image host 'images.example.com' is not on the allowlist"),
    ],
    ids=["scheme", "no-scheme", "no-host", "credentials", "allowlist"],
)
def test_image_mirror_words_the_guards_url_refusals_as_image_rejected(
    s3: Any, http_server: Any, url: str, message: str
) -> None:
    # Given the mirror (its guard allows http on 127.0.0.1 only)
    mirror, spy = _mirror(s3)
    # When it is handed a URL the guard refuses
    with pytest.raises(ImageRejectedError) as caught:
        mirror.mirror(url, STEM, METADATA, Deadline.after(10))
    # Then the caller sees the mirror's own wording as a 502 image_rejected, and nothing was fetched or stored
    assert (caught.value.status, caught.value.code, caught.value.message) == (502, "image_rejected", message)
    assert isinstance(caught.value.__cause__, RefusedError)
    assert http_server.received == [] and spy.calls == []


def test_image_mirror_words_an_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an allowlisted host name that does not resolve
    def no_such_host(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    mirror = ImageMirror(object(), BUCKET, R2_GUARD, session=guarded_session())
    # When mirrored, Then it is refused in the mirror's words
    with pytest.raises(ImageRejectedError) as caught:
        mirror.mirror("https://pub-gone.r2.dev/x.png", STEM, METADATA, Deadline.after(5))
    assert caught.value.message == "image host 'pub-gone.r2.dev' does not resolve"


@pytest.mark.parametrize("reason", list(Refusal))
def test_image_refusal_words_every_reason_of_the_guard(reason: Refusal) -> None:
    error = image_refusal(RefusedError(reason, "a neutral sentence", "3"))
    assert error.code == "image_rejected" and "image" in error.message and "webhook" not in error.message


# ---------------------------------------------------------------------------------------------------- sniff_image
@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (png(640, 480), ImageKind("image/png", "png", 640, 480)),
        (png(1, 65535), ImageKind("image/png", "png", 1, 65535)),
        (PNG_SIGNATURE, ImageKind("image/png", "png", None, None)),
        (jpeg(800, 600), ImageKind("image/jpeg", "jpg", 800, 600)),
        (jpeg(1024, 768, sof=0xC2), ImageKind("image/jpeg", "jpg", 1024, 768)),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", ImageKind("image/jpeg", "jpg", None, None)),
        (webp_vp8(320, 240), ImageKind("image/webp", "webp", 320, 240)),
        (webp_vp8(800, 600, scale_bits=3), ImageKind("image/webp", "webp", 800, 600)),
        (webp_vp8l(1024, 768), ImageKind("image/webp", "webp", 1024, 768)),
        (webp_vp8x(2048, 1536), ImageKind("image/webp", "webp", 2048, 1536)),
        (b"RIFF\0\0\0\0WEBP", ImageKind("image/webp", "webp", None, None)),
    ],
    ids=[
        "png",
        "png-extreme",
        "png-signature-only",
        "jpeg",
        "jpeg-progressive",
        "jpeg-no-sof",
        "webp-vp8",
        "webp-vp8-scaled",
        "webp-vp8l",
        "webp-vp8x",
        "webp-bare",
    ],
)
def test_sniff_image_identifies_png_jpeg_webp_with_dimensions(head: bytes, expected: ImageKind) -> None:
    assert sniff_image(head) == expected


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"GIF89a\x01\x00\x01\x00",
        b"<html><body>not found</body></html>",
        b'<svg xmlns="http://www.w3.org/2000/svg"/>',
        b"RIFF\x24\0\0\0WAVEfmt ",
        b"\x89PNX\r\n\x1a\n",
        b"\x89PNG\r\n",
        b"\xff\xd8",
        b"RIFF\0\0\0\0WEB",
        b'{"output": "https://pub-1.r2.dev/x.png"}',
    ],
)
def test_sniff_image_refuses_everything_else(head: bytes) -> None:
    assert sniff_image(head) is None


# ---------------------------------------------------------------------------------------------------- ImageMirror
class S3Spy:
    """Wraps a boto3 S3 client and records which calls the mirror made (and the size of uploaded parts)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[str] = []
        self.part_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if name == "upload_part":
                self.part_sizes.append(len(kwargs["Body"]))
            return method(*args, **kwargs)

        return record


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _mirror(s3_client: Any, **options: Any) -> tuple[ImageMirror, S3Spy]:
    spy = S3Spy(s3_client)
    guard = UrlGuard(("127.0.0.1",), allow_http=True)
    return ImageMirror(spy, BUCKET, guard, session=guarded_session(["127.0.0.0/8"]), **options), spy


def _assert_multipart(spy: S3Spy, total: int) -> None:
    """One multipart upload, completed then self-copied, whose parts S3 accepts and that kept memory bounded."""
    assert spy.calls[0] == "create_multipart_upload"
    assert spy.calls[-2:] == ["complete_multipart_upload", "copy_object"]
    assert set(spy.calls[1:-2]) == {"upload_part"}
    sizes = spy.part_sizes
    assert len(sizes) >= 2
    assert sum(sizes) == total
    assert all(size > 0 for size in sizes), f"empty part in {sizes}"
    assert all(size >= S3_MIN_PART_BYTES for size in sizes[:-1]), f"part below the S3 minimum in {sizes}"
    assert all(size < S3_MIN_PART_BYTES + CHUNK_BYTES for size in sizes), f"part buffer grew unbounded: {sizes}"


def _keys(s3_client: Any) -> list[str]:
    return [item["Key"] for item in s3_client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def _pending_uploads(s3_client: Any) -> list[Any]:
    return list(s3_client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))


@pytest.mark.parametrize(
    ("body", "content_type", "extension", "size"),
    [
        (png(640, 480, 20_000), "image/png", "png", (640, 480)),
        (png(1024, 1024, 300_000), "image/png", "png", (1024, 1024)),
        (jpeg(800, 600, 90_000), "image/jpeg", "jpg", (800, 600)),
        (webp_vp8l(512, 512), "image/webp", "webp", (512, 512)),
    ],
    ids=["png-under-sniff-size", "png-300k", "jpeg", "webp"],
)
def test_image_mirror_small_image_is_one_put_with_metadata(
    s3: Any, http_server: Any, body: bytes, content_type: str, extension: str, size: tuple[int, int]
) -> None:
    # Given an image host serving a small image (labelled as a generic binary: the bytes decide)
    http_server.reply(200, body, {"Content-Type": "application/octet-stream"})
    mirror, spy = _mirror(s3, part_bytes=1)  # a part size below the S3 minimum is raised to it
    # When mirrored
    stored = mirror.mirror(http_server.url("/out/prompt-1.png"), STEM, METADATA, Deadline.after(10))
    # Then one PutObject stored exactly those bytes, under the sniffed extension, with digest and size metadata
    digest = hashlib.sha256(body).hexdigest()
    assert spy.calls == ["put_object"]
    assert (stored.bucket, stored.key) == (BUCKET, f"{STEM}.{extension}")
    assert (stored.content_type, stored.bytes, stored.sha256) == (content_type, len(body), digest)
    assert (stored.width, stored.height) == size
    assert _keys(s3) == [stored.key]
    head = s3.head_object(Bucket=BUCKET, Key=stored.key)
    assert head["ContentType"] == content_type
    assert head["ContentLength"] == len(body)
    assert head["Metadata"] == {**METADATA, "sha256": digest, "bytes": str(len(body))}
    assert s3.get_object(Bucket=BUCKET, Key=stored.key)["Body"].read() == body
    [request] = http_server.received
    assert (request.method, request.path) == ("GET", "/out/prompt-1.png")
    assert request.headers["Accept"] == "image/png, image/jpeg, image/webp"


def test_image_mirror_large_image_is_multipart_then_self_copied_with_metadata(s3: Any, http_server: Any) -> None:
    # Given a 12 MiB PNG
    body = png(2048, 2048, 12 * MIB)
    http_server.reply(200, body)
    mirror, spy = _mirror(s3, part_bytes=S3_MIN_PART_BYTES)
    # When mirrored
    stored = mirror.mirror(http_server.url("/big.png"), STEM, METADATA, Deadline.after(20))
    # Then it went up in parts of at least 5 MiB, was completed, and a self-copy recorded the digest and size
    digest = hashlib.sha256(body).hexdigest()
    _assert_multipart(spy, len(body))
    assert (stored.key, stored.bytes, stored.sha256) == (f"{STEM}.png", len(body), digest)
    assert (stored.width, stored.height) == (2048, 2048)
    head = s3.head_object(Bucket=BUCKET, Key=stored.key)
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == len(body)
    assert head["Metadata"] == {**METADATA, "sha256": digest, "bytes": str(len(body))}
    assert hashlib.sha256(s3.get_object(Bucket=BUCKET, Key=stored.key)["Body"].read()).hexdigest() == digest
    assert _keys(s3) == [stored.key]
    assert _pending_uploads(s3) == []


def test_image_mirror_exact_part_multiple_leaves_no_empty_part(s3: Any, http_server: Any) -> None:
    body = png(size=2 * S3_MIN_PART_BYTES)
    http_server.reply(200, body)
    mirror, spy = _mirror(s3)
    stored = mirror.mirror(http_server.url("/two-parts.png"), STEM, METADATA, Deadline.after(20))
    _assert_multipart(spy, len(body))
    assert s3.head_object(Bucket=BUCKET, Key=stored.key)["ContentLength"] == len(body)


@pytest.mark.parametrize(
    "body",
    [b"<html><body>Access denied</body></html>", b'{"error": "expired"}', b"GIF89a" + _filler(100_000), b""],
    ids=["html", "json", "gif-100k", "empty"],
)
def test_image_mirror_non_image_is_rejected_and_nothing_stored(s3: Any, http_server: Any, body: bytes) -> None:
    # Given a host answering 200 with something that is not a PNG/JPEG/WebP, despite an image content type
    http_server.reply(200, body, {"Content-Type": "image/png"})
    mirror, spy = _mirror(s3)
    # When mirrored, Then it is refused and the bucket stays empty
    with pytest.raises(ImageRejectedError, match="not an image"):
        mirror.mirror(http_server.url("/x.png"), STEM, METADATA, Deadline.after(10))
    assert spy.calls == []
    assert _keys(s3) == []


def test_image_mirror_declared_oversize_is_rejected_before_reading(s3: Any, http_server: Any) -> None:
    # Given an image whose Content-Length exceeds the limit
    http_server.reply(200, png(size=4096))
    mirror, spy = _mirror(s3, max_bytes=2048)
    # When mirrored, Then it is refused and nothing touched S3
    with pytest.raises(ImageRejectedError, match="too large"):
        mirror.mirror(http_server.url("/x.png"), STEM, METADATA, Deadline.after(10))
    assert spy.calls == []
    assert _keys(s3) == []


def test_image_mirror_small_undeclared_oversize_is_rejected(s3: Any, http_server: Any) -> None:
    http_server.reply(200, png(size=4096), declared_length=-1)  # no Content-Length: the size shows while reading
    mirror, _ = _mirror(s3, max_bytes=2048)
    with pytest.raises(ImageRejectedError, match="too large"):
        mirror.mirror(http_server.url("/x.png"), STEM, METADATA, Deadline.after(10))
    assert _keys(s3) == []


def test_image_mirror_oversize_mid_multipart_aborts_the_upload(s3: Any, http_server: Any) -> None:
    # Given an 8 MiB image without Content-Length and a 6 MiB limit: one 5 MiB part is uploaded before it shows
    http_server.reply(200, png(size=8 * MIB), declared_length=-1)
    mirror, spy = _mirror(s3, max_bytes=6 * MIB)
    # When mirrored
    with pytest.raises(ImageRejectedError, match="too large"):
        mirror.mirror(http_server.url("/huge.png"), STEM, METADATA, Deadline.after(20))
    # Then the multipart upload was aborted: no object and no pending upload is left behind
    assert spy.calls == ["create_multipart_upload", "upload_part", "abort_multipart_upload"]
    assert _keys(s3) == []
    assert _pending_uploads(s3) == []


def test_image_mirror_compressed_body_limit_applies_to_decoded_bytes_with_bounded_memory(
    s3: Any, http_server: Any
) -> None:
    # Given a gzip-encoded "image" of 64 MiB that is only ~64 KiB on the wire (within the declared-size check)
    bomb = gzip.compress(png(size=1_000) + bytes(64 * MIB), compresslevel=9)
    http_server.reply(200, bomb, {"Content-Encoding": "gzip"})
    mirror, spy = _mirror(s3, max_bytes=2 * MIB)
    # When mirrored
    tracemalloc.start()
    try:
        with pytest.raises(ImageRejectedError, match="too large"):
            mirror.mirror(http_server.url("/bomb.png"), STEM, METADATA, Deadline.after(10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then the limit counts decoded bytes, nothing is stored, and memory never held the inflated body
    assert len(bomb) < 2 * MIB
    assert spy.calls == []
    assert _keys(s3) == []
    assert peak < 16 * MIB


def test_image_mirror_truncated_body_is_rejected(s3: Any, http_server: Any) -> None:
    # Given a host announcing 200,000 bytes and closing after 100,000
    http_server.reply(200, png(size=100_000), declared_length=200_000)
    mirror, _ = _mirror(s3)
    # When mirrored, Then the partial image is refused and not stored
    with pytest.raises(ImageRejectedError, match="truncated"):
        mirror.mirror(http_server.url("/x.png"), STEM, METADATA, Deadline.after(10))
    assert _keys(s3) == []


def test_image_mirror_truncated_multipart_body_aborts_the_upload(s3: Any, http_server: Any) -> None:
    http_server.reply(200, png(size=6 * MIB), declared_length=8 * MIB)
    mirror, spy = _mirror(s3)
    with pytest.raises(ImageRejectedError, match="truncated"):
        mirror.mirror(http_server.url("/x.png"), STEM, METADATA, Deadline.after(20))
    assert "abort_multipart_upload" in spy.calls
    assert _keys(s3) == []
    assert _pending_uploads(s3) == []


@pytest.mark.parametrize("status", [403, 404, 500])
def test_image_mirror_non_200_is_rejected(s3: Any, http_server: Any, status: int) -> None:
    http_server.reply(status, b"<Error>AccessDenied</Error>")
    mirror, _ = _mirror(s3)
    with pytest.raises(ImageRejectedError, match=f"HTTP {status}"):
        mirror.mirror(http_server.url("/x.png"), STEM, METADATA, Deadline.after(10))
    assert _keys(s3) == []


def test_image_mirror_follows_allowed_redirect(s3: Any, http_server: Any) -> None:
    # Given a redirect to another path of the same allowlisted host
    body = png(256, 256, 5_000)
    http_server.reply(302, b"", {"Location": "/real/image.png"}).reply(200, body)
    mirror, _ = _mirror(s3)
    # When mirrored, Then the redirect is followed and the final image stored
    stored = mirror.mirror(http_server.url("/short"), STEM, METADATA, Deadline.after(10))
    assert [request.path for request in http_server.received] == ["/short", "/real/image.png"]
    assert stored.sha256 == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://evil.example/x.png",
        "http://localhost:1/x.png",
        "//evil.example/x.png",
        "file:///etc/passwd",
        "http://user:pw@127.0.0.1/x.png",
    ],
)
def test_image_mirror_refuses_redirect_leaving_the_allowlist(s3: Any, http_server: Any, location: str) -> None:
    # Given an allowlisted host redirecting somewhere that is not allowed
    http_server.reply(301, b"", {"Location": location}).reply(200, png(size=1_000))
    mirror, spy = _mirror(s3)
    # When mirrored, Then the hop is refused before it is fetched and nothing is stored
    with pytest.raises(ImageRejectedError):
        mirror.mirror(http_server.url("/x.png"), STEM, METADATA, Deadline.after(10))
    assert len(http_server.received) == 1
    assert spy.calls == []


def test_image_mirror_refuses_endless_redirects(s3: Any, http_server: Any) -> None:
    for index in range(6):
        http_server.reply(302, b"", {"Location": f"/hop{index}"})
    mirror, _ = _mirror(s3)
    with pytest.raises(ImageRejectedError) as caught:
        mirror.mirror(http_server.url("/start"), STEM, METADATA, Deadline.after(10))
    assert caught.value.message == "more than 3 redirects while downloading the image"
    assert len(http_server.received) == 4  # the first request and three redirects


def test_image_mirror_production_session_refuses_loopback_host(s3: Any, http_server: Any) -> None:
    # Given the production session (public addresses only) with a guard that would allow the host
    guard = UrlGuard(("127.0.0.1",), allow_http=True)
    mirror = ImageMirror(s3, BUCKET, guard, session=guarded_session())
    # When mirrored, Then the address is refused as an image_rejected error and the server saw nothing
    with pytest.raises(ImageRejectedError) as caught:
        mirror.mirror(http_server.url("/x.png"), STEM, METADATA, Deadline.after(10))
    assert caught.value.message == "image host '127.0.0.1' resolves to a non-public address"
    assert http_server.received == []


def test_image_mirror_silent_host_times_out(s3: Any, http_server: Any) -> None:
    http_server.reply(200, png(size=1_000), delay_s=3.0)
    mirror, _ = _mirror(s3, read_timeout_s=0.5)
    with pytest.raises(UpstreamTimeoutError):
        mirror.mirror(http_server.url("/x.png"), STEM, METADATA, Deadline.after(10))
    assert _keys(s3) == []


def test_image_mirror_dripping_host_is_cut_at_the_deadline(s3: Any, http_server: Any) -> None:
    # Given a host sending one byte every 0.3 s (each read succeeds, so only the deadline can stop it)
    http_server.reply(200, png(size=1_000), drip_s=0.3)
    mirror, _ = _mirror(s3)
    # When mirrored with 0.8 s of budget, Then it gives up with a timeout and stores nothing
    with pytest.raises(UpstreamTimeoutError):
        mirror.mirror(http_server.url("/x.png"), STEM, METADATA, Deadline.after(0.8))
    assert _keys(s3) == []


def test_image_mirror_does_not_fetch_once_the_deadline_has_passed(s3: Any, http_server: Any) -> None:
    # Given a budget already spent
    mirror = ImageMirror(
        s3, BUCKET, UrlGuard(("127.0.0.1",), allow_http=True), session=guarded_session(["127.0.0.0/8"])
    )
    # When the mirror is asked to fetch, Then it answers with a timeout and sends nothing
    with pytest.raises(UpstreamTimeoutError):
        mirror.mirror(http_server.url("/x.png"), "images/x", {}, Deadline.after(-1))
    assert http_server.received == []
    assert http_server.connections == 0


# ---------------------------------------------------------------------------------------------------- screening
def test_image_mirror_screen_sees_the_whole_image_before_it_is_stored(s3: Any, http_server: Any) -> None:
    # Given content moderation screening what the mirror downloads
    body = png(640, 480, 300_000)
    http_server.reply(200, body)
    seen: list[tuple[bytes, str, int | None, int | None]] = []

    def screen(data: bytes, kind: ImageKind) -> None:
        seen.append((data, kind.content_type, kind.width, kind.height))
        assert spy.calls == []  # nothing stored yet

    mirror, spy = _mirror(s3)
    # When mirrored, Then the screen got exactly the image's bytes, and the image was stored after it
    stored = mirror.mirror(http_server.url("/ok.png"), STEM, METADATA, Deadline.after(10), screen=screen)
    assert seen == [(body, "image/png", 640, 480)]
    assert spy.calls == ["put_object"] and _keys(s3) == [stored.key]


def test_image_mirror_a_refused_image_is_never_written(s3: Any, http_server: Any) -> None:
    from imagegen.errors import ContentBlockedError

    http_server.reply(200, png(256, 256, 20_000))

    def screen(data: bytes, kind: ImageKind) -> None:
        raise ContentBlockedError("image", ["VIOLENCE"])

    mirror, spy = _mirror(s3)
    with pytest.raises(ContentBlockedError):
        mirror.mirror(http_server.url("/bad.png"), STEM, METADATA, Deadline.after(10), screen=screen)
    assert spy.calls == [] and _keys(s3) == []


def test_image_mirror_an_image_over_one_part_cannot_be_screened_and_leaves_nothing(s3: Any, http_server: Any) -> None:
    # Given an image larger than one upload part (and than what moderation accepts)
    http_server.reply(200, png(size=8 * MIB), declared_length=-1)
    mirror, spy = _mirror(s3)
    # When mirrored with a screen, Then it is refused before any upload starts
    with pytest.raises(ImageRejectedError, match="too large to be screened"):
        mirror.mirror(http_server.url("/big.png"), STEM, METADATA, Deadline.after(20), screen=lambda data, kind: None)
    assert spy.calls == [] and _keys(s3) == [] and _pending_uploads(s3) == []


# ---------------------------------------------------------------------------------------------------- conversion
def _pillow_image(fmt: str, width: int, height: int, mode: str = "RGB") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, (width, height), (10, 120, 200, 128)[: len(mode)]).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("source", "conversion", "content_type", "extension", "pillow_format"),
    [
        (("PNG", "RGB"), Conversion("jpeg", 80), "image/jpeg", "jpg", "JPEG"),
        (("PNG", "RGBA"), Conversion("jpeg"), "image/jpeg", "jpg", "JPEG"),  # alpha dropped: JPEG has none
        (("PNG", "RGBA"), Conversion("webp", 50), "image/webp", "webp", "WEBP"),
        (("JPEG", "RGB"), Conversion("png"), "image/png", "png", "PNG"),
        (("JPEG", "RGB"), Conversion("jpeg", 30), "image/jpeg", "jpg", "JPEG"),  # a quality re-encodes
        (("WEBP", "RGB"), Conversion("png"), "image/png", "png", "PNG"),
    ],
)
def test_image_mirror_converts_and_describes_the_stored_file(
    s3: Any,
    http_server: Any,
    source: tuple[str, str],
    conversion: Conversion,
    content_type: str,
    extension: str,
    pillow_format: str,
) -> None:
    from PIL import Image

    # Given an image host serving a 320x240 image in the source format
    body = _pillow_image(source[0], 320, 240, source[1])
    http_server.reply(200, body, {"Content-Type": "application/octet-stream"})
    mirror, _ = _mirror(s3)
    # When mirrored with a conversion
    stored = mirror.mirror(http_server.url("/x"), STEM, METADATA, Deadline.after(10), conversion=conversion)
    # Then the stored object is that format, and the record describes it (not the source)
    data = s3.get_object(Bucket=BUCKET, Key=stored.key)["Body"].read()
    assert stored.key == f"{STEM}.{extension}"
    assert (stored.content_type, stored.bytes, stored.sha256) == (
        content_type,
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert (stored.width, stored.height) == (320, 240)
    assert s3.head_object(Bucket=BUCKET, Key=stored.key)["ContentType"] == content_type
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == pillow_format and image.size == (320, 240)


def test_image_mirror_same_format_without_quality_is_stored_as_it_is(s3: Any, http_server: Any) -> None:
    body = png(640, 480, 200_000)  # not decodable by Pillow: proves nothing decoded it
    http_server.reply(200, body, {"Content-Type": "image/png"})
    mirror, spy = _mirror(s3)
    stored = mirror.mirror(http_server.url("/x"), STEM, METADATA, Deadline.after(10), conversion=Conversion("png"))
    assert stored.sha256 == hashlib.sha256(body).hexdigest() and spy.calls == ["put_object"]


def test_image_mirror_conversion_refuses_an_undecodable_or_oversized_image(s3: Any, http_server: Any) -> None:
    mirror, _ = _mirror(s3)
    # A PNG header over garbage: sniffed as an image, refused by the decoder (without Pillow's text)
    http_server.reply(200, png(640, 480, 5_000), {"Content-Type": "image/png"})
    with pytest.raises(ImageRejectedError, match="could not be decoded"):
        mirror.mirror(http_server.url("/x"), STEM, METADATA, Deadline.after(10), conversion=Conversion("jpeg"))
    # A header declaring more than 2048x2048: refused before decoding
    http_server.reply(200, png(4096, 4096, 5_000), {"Content-Type": "image/png"})
    with pytest.raises(ImageRejectedError, match="larger than 2048x2048"):
        mirror.mirror(http_server.url("/x"), STEM, METADATA, Deadline.after(10), conversion=Conversion("webp"))
    assert _keys(s3) == []


def test_image_mirror_with_a_conversion_screens_the_upstream_file_not_the_converted_one(
    s3: Any, http_server: Any
) -> None:
    # Given moderation screening, and a PNG stored as WebP (which moderation might not read)
    body = _pillow_image("PNG", 320, 240)
    http_server.reply(200, body, {"Content-Type": "image/png"})
    seen: list[tuple[bytes, str]] = []

    def screen(data: bytes, kind: ImageKind) -> None:
        seen.append((data, kind.content_type))

    mirror, spy = _mirror(s3)
    # When mirrored with the conversion
    stored = mirror.mirror(
        http_server.url("/ok.png"), STEM, METADATA, Deadline.after(10), conversion=Conversion("webp"), screen=screen
    )
    # Then the screen saw the upstream's PNG once, before the WebP was stored
    assert seen == [(body, "image/png")]
    assert stored.content_type == "image/webp" and spy.calls == ["put_object"]
