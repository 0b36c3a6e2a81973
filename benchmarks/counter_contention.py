"""Job counters under concurrent item transitions: one counter row per job (the old model) against up to 64
counter shards (the current one), through the repository's own code, against the local DynamoDB (moto, started
as the local stack starts it: ``devstack.aws.LocalAws``).

Each of ``--items`` items of one job makes the two transitions a worker makes (claim: queued → running, then
running → succeeded, the last one completing the job), from ``--threads`` threads at once, in a shuffled order
(a queue delivers in any order). ``--runs`` alternates the two models. Reported per model:
wall time, transactions, TransactionConflict retries the repository performed, and **modelled conflicts**.

What moto does and does not emulate. The local server runs one DynamoDB operation at a time (its launcher holds a
lock around each, see ``devstack/moto_server.py``), so two transactions are never in flight together there and
moto never answers ``TransactionConflict``: the retry count is 0 by construction on this machine. The conflict
figure is therefore a model: every transaction's window (request sent → answer received, as the client saw it) is
recorded with the counter row it updates, and a transaction counts as a conflict when its window overlaps an
earlier-started one on the same counter row, which is when DynamoDB may cancel one of the two. The client's window
is longer than DynamoDB's own (it includes the network and moto's queue), so the model overstates conflicts for both
models alike; what it compares is how often transitions meet on one row. Wall times are moto's, not DynamoDB's.

    PYTHONPATH=layers/shared:functions/api:functions/worker:local .venv/bin/python benchmarks/counter_contention.py
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=400, help="items of the job (two transitions each)")
    parser.add_argument("--threads", type=int, default=32, help="concurrent transitions")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

    import boto3
    from botocore.config import Config
    from devstack.aws import REGION, LocalAws, Resources
    from imagegen.adapters.job_rows import job_key
    from imagegen.adapters.jobs_table import JobRepository
    from imagegen.entities import Job
    from imagegen.models import ImageRequest

    class SingleRowRepository(JobRepository):
        """The old model: every transition updates the job's own row (what a job from before the shards gets)."""

        def _counted(self, job_id, index, operations, deltas, *, completion=False, open_only=False):  # type: ignore[no-untyped-def]
            return self._counted_on(job_key(job_id), job_id, operations, deltas, completion, open_only, legacy=True)

    class Recorder:
        """The DynamoDB client, recording each transaction's window and the counter rows it updates."""

        def __init__(self, client: Any) -> None:
            self._client = client
            self.windows: list[tuple[float, float, str]] = []
            self.transactions = 0
            self._lock = threading.Lock()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._client, name)

        def transact_write_items(self, **kwargs: Any) -> Any:
            rows = [
                op["Update"]["Key"]["sk"]["S"]
                for op in kwargs["TransactItems"]
                if "Update" in op and op["Update"]["Key"]["sk"]["S"].startswith("JOB")
            ]
            start = time.perf_counter()
            try:
                return self._client.transact_write_items(**kwargs)
            finally:
                end = time.perf_counter()
                with self._lock:
                    self.transactions += 1
                    self.windows.extend((start, end, row) for row in rows)

    def overlaps(windows: list[tuple[float, float, str]]) -> int:
        by_row: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for start, end, row in windows:
            by_row[row].append((start, end))
        conflicts = 0
        for spans in by_row.values():
            spans.sort()
            latest_end = float("-inf")
            for start, end in spans:
                if start < latest_end:
                    conflicts += 1
                latest_end = max(latest_end, end)
        return conflicts

    with LocalAws() as aws:
        resources = Resources()
        aws.seed(resources)
        table = resources.table
        rows = []
        for run in range(args.runs):
            for name, cls in (("one job row", SingleRowRepository), ("64 shards", JobRepository)):
                client = boto3.client(
                    "dynamodb",
                    endpoint_url=aws.endpoint_url,
                    region_name=REGION,
                    aws_access_key_id="local",
                    aws_secret_access_key="local",
                    config=Config(max_pool_connections=args.threads + 4),
                )
                recorder = Recorder(client)
                repository = cls(recorder, table, 1)
                job_id = f"job_{run:04d}{'a' if cls is JobRepository else 'b'}" + "0" * 27
                job = Job(id=job_id, total=args.items, created_at=datetime.now(UTC), counts=None, remaining=0)  # type: ignore[arg-type]
                requests = [ImageRequest(prompt=f"p{i}", seed=i, width=256, height=256) for i in range(args.items)]
                repository.create(job, requests)
                if cls is SingleRowRepository:  # the old shape: counters on the job's row, no shards
                    for row in repository._job_rows(job_id)[1]:
                        client.delete_item(TableName=table, Key={"pk": row["pk"], "sk": row["sk"]})
                    counters = {f"c_{c}": {"N": "0"} for c in ("running", "succeeded", "failed", "canceled", "waiting")}
                    client.put_item(
                        TableName=table,
                        Item={
                            **job_key(job_id),
                            "id": {"S": job_id},
                            "total": {"N": str(args.items)},
                            "remaining": {"N": str(args.items)},
                            "c_queued": {"N": str(args.items)},
                            "created_at": {"S": job.created_at.isoformat()},
                            "canceled": {"BOOL": False},
                            **counters,
                        },
                    )
                recorder.windows.clear()
                recorder.transactions = 0
                completed: list[bool] = []

                def work(
                    index: int, repository: JobRepository = repository, job_id: str = job_id, completed=completed
                ) -> None:
                    repository.claim(job_id, index, lease_s=60)
                    item = repository.get_item(job_id, index)
                    assert item is not None
                    completed.append(repository.transition(item, "succeeded"))

                started = time.perf_counter()
                order = list(range(args.items))
                random.Random(run).shuffle(order)  # as a queue delivers them: any order
                with ThreadPoolExecutor(args.threads) as pool:
                    list(pool.map(work, order))
                elapsed = time.perf_counter() - started
                final = repository.get_job(job_id)
                assert final is not None and final.counts.succeeded == args.items and final.completed_at is not None
                assert completed.count(True) == 1, completed.count(True)
                transactions = recorder.transactions
                rows.append(
                    (
                        name,
                        args.items,
                        args.threads,
                        transactions,
                        repository.conflict_retries,
                        overlaps(recorder.windows),
                        elapsed,
                    )
                )
        header = f"{'model':<12} {'items':>6} {'threads':>7} {'txns':>6} {'retries':>7}"
        print(f"{header} {'modelled conflicts':>18} {'time s':>7}")
        for name, items, threads, transactions, retries, conflicts, elapsed in rows:
            share = f"{conflicts} ({100 * conflicts / max(1, transactions):.0f} %)"
            print(f"{name:<12} {items:>6} {threads:>7} {transactions:>6} {retries:>7} {share:>18} {elapsed:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
