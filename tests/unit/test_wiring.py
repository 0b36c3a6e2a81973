"""How the service builds its AWS clients (no network: presigning is local)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from imagegen.wiring import aws_client


@pytest.mark.parametrize(
    ("region", "host"),
    [
        ("us-east-1", "my-bucket.s3.us-east-1.amazonaws.com"),
        ("eu-central-2", "my-bucket.s3.eu-central-2.amazonaws.com"),
        ("cn-north-1", "my-bucket.s3.cn-north-1.amazonaws.com.cn"),
        ("us-gov-west-1", "my-bucket.s3.us-gov-west-1.amazonaws.com"),
    ],
)
def test_presigned_urls_name_the_buckets_region_in_its_partition(monkeypatch, region, host):
    # Given a function running in a Region of any partition (no local endpoint override)
    monkeypatch.setenv("AWS_REGION", region)
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    # When it presigns an image URL
    url = aws_client("s3").generate_presigned_url(
        "get_object", Params={"Bucket": "my-bucket", "Key": "images/a.png"}, ExpiresIn=60
    )
    # Then the URL is virtual-hosted on the Region's own endpoint, in that partition's domain, signed for it
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.path) == ("https", host, "/images/a.png")
    assert f"%2F{region}%2Fs3%2Faws4_request" in parts.query


def test_a_local_endpoint_is_used_as_given(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5001")
    url = aws_client("s3").generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"}, ExpiresIn=60)
    assert url.startswith("http://127.0.0.1:5001/b/k?")
