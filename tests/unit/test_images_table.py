"""ImageRepository on a moto DynamoDB table: round trip, no overwrite, unknown ids, TTL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from imagegen.adapters.images_table import ImageRepository, image_key
from imagegen.models import GenerationParameters, ImageRecord, StoredImage, Timings
from moto import mock_aws

TABLE = "images-unit-test"
IMAGE_ID = "img_0123456789abcdef0123456789abcdef"
# Recent enough not to be expired under the 30-day retention the tests use (expired records read as gone).
CREATED_AT = datetime.now(UTC).replace(microsecond=123456) - timedelta(days=1)


def _record(image_id: str = IMAGE_ID, **stored: Any) -> ImageRecord:
    return ImageRecord(
        id=image_id,
        parameters=GenerationParameters(
            prompt='a cozy cabin, "quoted" — ünïcode ☕', num_steps=4, seed=4_294_967_295, width=1024, height=768
        ),
        stored=StoredImage(
            bucket="images-bucket",
            key=f"images/{CREATED_AT:%Y/%m/%d}/{image_id}.png",
            content_type="image/png",
            bytes=1_234_567,
            sha256="ab" * 32,
            width=stored.get("width", 1024),
            height=stored.get("height", 768),
        ),
        created_at=CREATED_AT,
        timings=Timings(upstream_ms=4321, total_ms=5678),
    )


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        yield client


def test_images_table_round_trip_returns_an_equal_record(dynamodb: Any) -> None:
    # Given a stored record
    repository = ImageRepository(dynamodb, TABLE, retention_days=30)
    record = _record()
    repository.put(record)
    # When it is read back
    loaded = repository.get(IMAGE_ID)
    # Then every field survives, ints stay ints (not Decimal) and the timestamp keeps its zone
    assert loaded == record
    assert loaded is not None
    assert type(loaded.parameters.seed) is int
    assert loaded.created_at.tzinfo is not None


def test_images_table_round_trip_keeps_unknown_dimensions(dynamodb: Any) -> None:
    repository = ImageRepository(dynamodb, TABLE, retention_days=30)
    record = _record(width=None, height=None)
    repository.put(record)
    assert repository.get(IMAGE_ID) == record


def test_images_table_item_layout_and_ttl(dynamodb: Any) -> None:
    # Given a record stored with a 30-day retention
    ImageRepository(dynamodb, TABLE, retention_days=30).put(_record())
    # When the raw item is read
    item = dynamodb.get_item(TableName=TABLE, Key=image_key(IMAGE_ID))["Item"]
    # Then it uses the single-table keys, and expires (epoch seconds) when the bucket's copy does
    assert item["pk"] == {"S": f"IMAGE#{IMAGE_ID}"}
    assert item["sk"] == {"S": "IMAGE"}
    assert item["entity"] == {"S": "image"}
    assert int(item["expires_at"]["N"]) == int((CREATED_AT + timedelta(days=30)).timestamp())


def test_images_table_conditional_put_refuses_a_duplicate(dynamodb: Any) -> None:
    # Given a record already stored
    repository = ImageRepository(dynamodb, TABLE, retention_days=30)
    original = _record()
    repository.put(original)
    # When another image with the same id is put
    other_image = original.stored.model_copy(update={"sha256": "f" * 64})
    clash = original.model_copy(update={"stored": other_image, "timings": Timings(upstream_ms=1, total_ms=2)})
    with pytest.raises(ValueError, match="already exists") as caught:
        repository.put(clash)
    # Then it is refused, chained to the conditional-check failure, and the original is untouched
    assert isinstance(caught.value.__cause__, ClientError)
    assert repository.get(IMAGE_ID) == original


def test_images_table_a_retried_put_of_the_same_image_is_accepted(dynamodb: Any) -> None:
    # Given a PutItem whose first attempt succeeded (botocore retries it after a lost answer)
    repository = ImageRepository(dynamodb, TABLE, retention_days=30)
    original = _record()
    repository.put(original)
    # When the same image is put again, Then it is not an error and the record stays
    repository.put(original.model_copy(update={"timings": Timings(upstream_ms=1, total_ms=2)}))
    assert repository.get(IMAGE_ID) == original


def test_images_table_get_unknown_id_is_none(dynamodb: Any) -> None:
    repository = ImageRepository(dynamodb, TABLE, retention_days=30)
    repository.put(_record())
    assert repository.get("img_ffffffffffffffffffffffffffffffff") is None


def test_images_table_get_ignores_an_item_without_record(dynamodb: Any) -> None:
    # Given an item under an image key that holds no record (e.g. written by something else)
    dynamodb.put_item(TableName=TABLE, Item=image_key(IMAGE_ID))
    # When read, Then it is treated as absent rather than failing
    assert ImageRepository(dynamodb, TABLE, retention_days=30).get(IMAGE_ID) is None


def test_images_table_other_errors_propagate() -> None:
    # Given a table that does not exist
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        repository = ImageRepository(client, "missing-table", retention_days=30)
        # When a record is put, Then the AWS error is not disguised as a duplicate
        with pytest.raises(ClientError) as caught:
            repository.put(_record())
        assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_images_table_an_expired_record_reads_as_gone(dynamodb: Any) -> None:
    # Given a record whose retention ended (DynamoDB's TTL may take up to 48 h to delete it)
    repository = ImageRepository(dynamodb, TABLE, retention_days=1)
    old = _record("img_" + "e" * 32).model_copy(update={"created_at": datetime.now(UTC) - timedelta(days=2)})
    repository.put(old)
    # When it is read, Then it is gone, like its S3 object
    assert repository.get(old.id) is None
