"""Upstream slots (imagegen.slots): the bound on concurrent upstream calls of one invocation, and when a slot is
given back. Behaviour only: threads wait on events, never on the clock; every wait is bounded."""

from __future__ import annotations

import contextvars
import json
import random
import threading
import time
from typing import Any

import pytest
import requests
from aws_lambda_powertools.utilities.batch import EventType
from imagegen.adapters.flux import FluxClient
from imagegen.batch import ConcurrentBatchProcessor
from imagegen.budget import Deadline
from imagegen.errors import UpstreamTimeoutError
from imagegen.models import GenerationParameters
from imagegen.slots import UpstreamSlots, bound_upstream, current_slots, upstream_slot
from support.polling import eventually
from support.secrets_under_test import UNIT_SUBSCRIPTION_KEY

PATH = "/flux-1-schnell/v1/getData"
OUTPUT = "https://pub-582b7213209642b9b995c96c95a30381.r2.dev/flux-schnell-cf/prompt-1.png"
PARAMS = GenerationParameters(prompt="a lighthouse", num_steps=4, seed=1, width=512, height=512)
WAIT_S = 10  # the bound of every wait: a broken implementation fails, it never hangs


def test_slots_bound_concurrent_holders_and_the_rest_wait() -> None:
    # Given an invocation's three slots and ten threads (copies of its context) that each want one
    slots = UpstreamSlots(3)
    holding, most, lock, go = [0], [0], threading.Lock(), threading.Event()

    def call() -> None:
        with upstream_slot(Deadline.after(WAIT_S)):
            with lock:
                holding[0] += 1
                most[0] = max(most[0], holding[0])
            go.wait(WAIT_S)
            with lock:
                holding[0] -= 1

    with bound_upstream(slots):
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(call,)) for _ in range(10)]
    for thread in threads:
        thread.start()

    # When three hold their slot, the others are kept out until the holders give theirs back
    eventually(lambda: slots.in_use == 3, WAIT_S, "three threads to hold a slot", interval_s=0.005)
    assert holding[0] == 3
    go.set()
    for thread in threads:
        thread.join(WAIT_S)

    # Then never more than three held a slot at once, and every slot came back
    assert most[0] == 3
    assert slots.in_use == 0 and not any(thread.is_alive() for thread in threads)


def test_no_slot_outside_an_invocation_bound() -> None:
    # Given no bound (the synchronous API's path)
    assert current_slots() is None
    # When a call asks for a slot, then it goes ahead
    with upstream_slot(Deadline.after(WAIT_S)):
        assert current_slots() is None


def test_waiting_for_a_slot_gives_up_at_the_deadline_with_a_retryable_error() -> None:
    # Given an invocation whose only slot is held
    slots = UpstreamSlots(1)
    with bound_upstream(slots):
        assert slots.acquire(0)
        # When another call has no time left to wait for it
        with pytest.raises(UpstreamTimeoutError) as caught, upstream_slot(Deadline.after(0.5), reserve_s=1.0):
            pytest.fail("ran without a slot")
    # Then it failed retryably (the item goes back to the queue) and the held slot is untouched
    assert caught.value.retryable
    assert slots.in_use == 1


def test_slots_refuse_zero() -> None:
    with pytest.raises(ValueError, match="at least one"):
        UpstreamSlots(0)


def _client(url: str, sleep: Any = time.sleep) -> FluxClient:
    session = requests.Session()
    session.trust_env = False
    return FluxClient(
        url, lambda refresh=False: UNIT_SUBSCRIPTION_KEY, session=session, sleep=sleep, rng=random.Random(7)
    )


def test_flux_client_holds_a_slot_while_the_upstream_answers_and_gives_it_back_before_returning(
    http_server: Any,
) -> None:
    # Given an invocation's slots and an upstream that notes how many are held while it is answering
    slots = UpstreamSlots(2)
    seen: list[int] = []

    def answer(handler: Any) -> None:
        seen.append(slots.in_use)
        body = json.dumps({"output": OUTPUT}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    http_server.add(answer)

    # When an image is generated within the invocation
    with bound_upstream(slots):
        result = _client(http_server.url(PATH)).generate(PARAMS, Deadline.after(WAIT_S))
        after = slots.in_use

    # Then the call held one slot while the upstream worked, and none once its answer was read: whatever the
    # caller does next (mirror the image, record it) holds no slot
    assert result.output_url == OUTPUT
    assert seen == [1] and after == 0


def test_flux_client_holds_no_slot_during_a_retry_backoff(http_server: Any) -> None:
    # Given an upstream that answers 429 once, then the image
    http_server.reply_json(429, {"error": "slow down"}, {"Retry-After": "0"}).reply_json(200, {"output": OUTPUT})
    slots = UpstreamSlots(1)
    held_while_sleeping: list[int] = []

    # When the client backs off between the two attempts
    with bound_upstream(slots):
        client = _client(http_server.url(PATH), sleep=lambda seconds: held_while_sleeping.append(slots.in_use))
        result = client.generate(PARAMS, Deadline.after(WAIT_S))

    # Then it slept without its slot (another item could call meanwhile) and took it again for the retry
    assert result.attempts == 2
    assert held_while_sleeping == [0] and slots.in_use == 0


def test_batch_processor_runs_every_record_with_the_invocation_slots() -> None:
    # Given an invocation's slots and a batch of records run on the processor's threads
    slots = UpstreamSlots(2)
    seen: list[UpstreamSlots | None] = []
    records = [
        {"messageId": str(i), "receiptHandle": "r", "body": "{}", "attributes": {"ApproximateReceiveCount": "1"}}
        for i in range(6)
    ]
    processor = ConcurrentBatchProcessor(EventType.SQS, max_workers=3)

    # When the batch is processed inside the invocation's bound
    with bound_upstream(slots), processor(records, lambda record: seen.append(current_slots())):
        processor.process()

    # Then every record, on whichever thread, saw this invocation's slots
    assert seen == [slots] * 6
