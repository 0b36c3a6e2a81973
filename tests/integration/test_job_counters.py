"""The job's counter shards under moto: one shard per item up to 64, the sums shown as the job's counts, the
completion written once when the last items of different shards finish together, the cancel flag copied to the
shards (a claim never touches the job's row), and a job written before the shards still counted on its own row."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from imagegen.adapters.job_rows import COUNTER_SHARDS, item_key, job_key, new_item_row
from imagegen.entities import JobUnavailable
from imagegen.models import ImageRequest
from support.stack_fixtures import make_job


def rows(repository, job_id: str) -> list[dict[str, Any]]:
    answer = repository._client.query(
        TableName=repository._table,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :job)",
        ExpressionAttributeValues={":pk": {"S": f"JOB#{job_id}"}, ":job": {"S": "JOB"}},
        ConsistentRead=True,
    )
    return answer["Items"]


def claim_all(repository, job_id: str, total: int) -> list[Any]:
    items = []
    for index in range(total):
        repository.claim(job_id, index, lease_s=60)
        items.append(repository.get_item(job_id, index))
    return items


def test_counters_one_shard_per_item_up_to_64_and_the_job_shows_their_sums(stack, repository):
    # Given a job of 70 items
    job_id = make_job(repository, [f"p{i}" for i in range(70)])

    # Then its row and 64 counter shards sort together (one Query), none of the counters on the job's row
    found = rows(repository, job_id)
    job_row = next(row for row in found if row["sk"]["S"] == "JOB")
    shards = {row["sk"]["S"]: row for row in found if row["sk"]["S"] != "JOB"}
    assert len(shards) == COUNTER_SHARDS and "c_queued" not in job_row and job_row["shards"]["N"] == "64"
    assert shards["JOB#COUNT#00"]["c_queued"]["N"] == "2" and shards["JOB#COUNT#63"]["c_queued"]["N"] == "1"

    # When items 0 and 64 (one shard) and 5 are claimed and item 5 succeeds
    repository.claim(job_id, 0, lease_s=60)
    repository.claim(job_id, 64, lease_s=60)
    repository.claim(job_id, 5, lease_s=60)
    assert repository.transition(repository.get_item(job_id, 5), "succeeded") is False

    # Then the job's counts are the shards' sums
    job = repository.get_job(job_id)
    assert (job.counts.queued, job.counts.running, job.counts.succeeded, job.remaining) == (67, 2, 1, 69)
    assert job.completed_at is None and job.status == "running"


def test_a_small_job_has_one_shard_per_item(stack, repository):
    job_id = make_job(repository, ["a", "b", "c"])
    assert len(rows(repository, job_id)) == 1 + 3


@pytest.mark.parametrize("round_", range(3))
def test_last_items_of_different_shards_finishing_together_complete_the_job_exactly_once(stack, repository, round_):
    # Given a job of eight items (eight shards), all running
    job_id = make_job(repository, [f"p{i}" for i in range(8)])
    items = claim_all(repository, job_id, 8)

    # When all eight finish at the same moment, from eight threads
    start = threading.Barrier(8)
    outcomes: list[bool] = []

    def finish(item: Any) -> None:
        start.wait()
        outcomes.append(repository.transition(item, "succeeded"))

    threads = [threading.Thread(target=finish, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then exactly one caller completed the job, and the job is complete with every count right
    assert sorted(outcomes) == [False] * 7 + [True]
    job = repository.get_job(job_id)
    assert job.completed_at is not None and job.remaining == 0 and job.counts.succeeded == 8
    assert job.status == "succeeded"


def test_a_completion_a_crash_left_unwritten_is_written_by_the_next_look(stack, repository, monkeypatch):
    # Given a job of one item whose last transition committed, but whose worker died before writing completed_at
    job_id = make_job(repository, ["p"])
    (item,) = claim_all(repository, job_id, 1)
    real = repository.complete_if_done
    monkeypatch.setattr(repository, "complete_if_done", lambda job_id: None)
    assert repository.transition(item, "succeeded") is False
    assert repository.get_job(job_id).completed_at is None and repository.get_job(job_id).remaining == 0

    # When the next look (a redelivery finds the item terminal) completes it
    monkeypatch.setattr(repository, "complete_if_done", real)
    completed = repository.complete_if_done(job_id)

    # Then that look wins the completion, once
    assert completed is not None and completed.status == "succeeded"
    assert repository.complete_if_done(job_id) is None


def test_a_canceled_job_refuses_claims_through_its_shards(stack, repository):
    # Given a job of 100 items, canceled
    job_id = make_job(repository, [f"p{i}" for i in range(100)])
    assert repository.cancel(job_id) is True

    # Then every shard carries the flag, and a claim of any item is refused
    shards = [row for row in rows(repository, job_id) if row["sk"]["S"] != "JOB"]
    assert all(row["canceled"]["BOOL"] for row in shards)
    for index in (0, 63, 99):
        with pytest.raises(JobUnavailable):
            repository.claim(job_id, index, lease_s=60)

    # and its queued items are settled a page at a time, with the counters, and the job completes once
    cursor = repository.cancel_queued_page(job_id, None, limit=60)
    while cursor is not None:
        cursor = repository.cancel_queued_page(job_id, cursor, limit=60)
    job = repository.complete_if_done(job_id)
    assert job is not None and job.counts.canceled == 100 and job.remaining == 0 and job.status == "canceled"
    assert repository.cancel(job_id) is False  # completed: nothing left to cancel


def test_a_job_written_before_the_shards_still_counts_on_its_row_and_completes_once(stack, repository):
    # Given a job row of the old shape (its counters on the row, no shards) and its two queued items
    job_id = "job_" + "f" * 32
    created = datetime.now(UTC)
    repository._client.put_item(
        TableName=repository._table,
        Item={
            **job_key(job_id),
            "entity": {"S": "job"},
            "id": {"S": job_id},
            "total": {"N": "2"},
            "remaining": {"N": "2"},
            "created_at": {"S": created.isoformat()},
            "canceled": {"BOOL": False},
            "direct": {"BOOL": False},
            "expires_at": {"N": "9999999999"},
            **{f"c_{c}": {"N": "2" if c == "queued" else "0"} for c in ("queued", "running", "succeeded")},
            **{f"c_{c}": {"N": "0"} for c in ("failed", "canceled", "waiting")},
        },
    )
    for index in range(2):
        request = ImageRequest(prompt=f"p{index}", seed=index, width=256, height=256)
        repository._client.put_item(
            TableName=repository._table, Item=new_item_row(job_id, index, request, None, "9999999999")
        )
    assert repository._client.get_item(TableName=repository._table, Key=item_key(job_id, 1))["Item"]

    # When both items are claimed and finish
    first, second = claim_all(repository, job_id, 2)
    assert repository.transition(first, "succeeded") is False
    assert repository.get_job(job_id).counts.running == 1
    assert repository.transition(second, "failed") is True

    # Then the row counted them, and completed once
    job = repository.get_job(job_id)
    assert (job.counts.succeeded, job.counts.failed, job.remaining) == (1, 1, 0)
    assert job.completed_at is not None and job.status == "partially_failed"
