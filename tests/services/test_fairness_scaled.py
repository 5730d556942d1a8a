"""Fair share on PostgreSQL + Redis: the stamp is one Redis script shared by every
web process, and two workers claiming with SKIP LOCKED keep the fair order."""

from __future__ import annotations

import os
import threading
import uuid
from unittest import mock

import pytest
from django.conf import settings
from django.db import connection

from inference import admission, counters
from inference.auth import Caller
from inference.models import ApiKey, InferenceRequest
from inference.services import Submission, submit_request

pytestmark = pytest.mark.services


def test_two_web_processes_share_one_fair_share_clock() -> None:
    """Two stores (as two web processes have) stamp one key's requests one cost
    apart, atomically, and the in-flight slot comes in the same round trip."""
    first, second = (counters.RedisStore(os.environ["REDIS_URL"]) for _ in range(2))
    bucket = f"test-{uuid.uuid4()}"
    stamps = []

    def admit(store: counters.RedisStore) -> None:
        for _ in range(50):
            slot = counters.Slot(bucket, str(uuid.uuid4()), limit=1000, expires=2e9)
            held, stamp = store.admit(slot, counters.Clock(bucket, cost=2.0), now=1e9)
            assert held > 0
            stamps.append(stamp)

    threads = [threading.Thread(target=admit, args=(s,)) for s in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(stamps) == [1e9 + 2.0 * i for i in range(1, 101)]
    full = counters.Slot(bucket, "one too many", limit=100, expires=2e9)
    assert first.admit(full, counters.Clock(bucket, cost=2.0), now=1e9) == (-1, 1e9)


def test_two_workers_claiming_keep_a_flood_from_delaying_another_key(db_access) -> None:  # type: ignore[no-untyped-def]
    assert settings.REDIS_URL, "the stamps must come from Redis here"
    InferenceRequest.objects.filter(status="pending").delete()
    flood = Caller(key=ApiKey.objects.create_key(name="flood")[0])
    other = Caller(key=ApiKey.objects.create_key(name="other")[0])
    # Costs in the configured quantum (1 s), not the rate this shared database saw
    # last minute: the 105 submits take a moment, and with a measured quantum the
    # latecomers would rightly queue behind what the flood's head would have used.
    with mock.patch.object(admission.pending_count, "completed_per_second", return_value=0.0):
        for i in range(100):
            submit_request(Submission(prompt=f"flood {i}", caller=flood))
        latecomers = {
            submit_request(Submission(prompt=f"o{i}", caller=other))[0].pk for i in range(5)
        }
    order: list[uuid.UUID] = []
    lock = threading.Lock()

    def work(owner: str) -> None:
        try:
            while True:
                with lock:
                    if len(order) >= 12:
                        return
                row = InferenceRequest.objects.claim_next(owner, 30)
                with lock:
                    order.append(row.pk)
        finally:
            connection.close()

    workers = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert latecomers <= set(order[:12])
    InferenceRequest.objects.filter(prompt__startswith=("flood")).delete()
    InferenceRequest.objects.filter(pk__in=latecomers).delete()
