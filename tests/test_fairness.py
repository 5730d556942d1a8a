"""Priority tiers and per-key fair share: no key can starve another inside a tier,
no tier starves (aging), a full tier refuses while others admit, a key's ceiling
clamps."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.test import Client
from django.utils import timezone

from inference import admission, metrics, services
from inference.auth import Caller
from inference.models import ApiKey, InferenceRequest, Status, tier_of, tier_range
from pipeline.reaper import reap_once
from tests.conftest import submit

pytestmark = pytest.mark.django_db


def key(name: str, **fields: Any) -> Caller:
    api_key, _ = ApiKey.objects.create_key(name=name, **fields)
    return Caller(key=api_key)


def claims(n: int) -> list[InferenceRequest]:
    """The next ``n`` claims, one at a time (one free slot each time)."""
    taken = []
    for _ in range(n):
        row = InferenceRequest.objects.claim_next("w", 30)
        if row is None:
            break
        taken.append(row)
    return taken


def test_tiers_and_their_ranges() -> None:
    assert [tier_of(p) for p in range(10)] == ["background", *["low"] * 4, *["normal"] * 4, "high"]
    assert [tier_range(t) for t in ("background", "low", "normal", "high")] == [
        (0, 0),
        (1, 4),
        (5, 8),
        (9, 9),
    ]


def test_a_flooding_key_does_not_delay_another() -> None:
    flood, other = key("flood"), key("other")
    for i in range(100):
        submit(f"flood {i}", caller=flood)
    latecomers = {submit(f"other {i}", caller=other).pk for i in range(5)}
    first_ten = {row.pk for row in claims(10)}
    assert latecomers <= first_ten


def test_one_key_alone_is_served_first_come_first_served() -> None:
    alone = key("alone")
    submitted = [submit(f"p{i}", caller=alone).pk for i in range(20)]
    assert [row.pk for row in claims(20)] == submitted


def test_a_heavier_weight_gets_a_bigger_share() -> None:
    light, heavy = key("light"), key("heavy", fair_share_weight=3)
    for i in range(30):
        submit(f"l{i}", caller=light)
        submit(f"h{i}", caller=heavy)
    first = claims(20)
    heavy_share = sum(row.api_key_id == heavy.key_prefix for row in first)
    assert 14 <= heavy_share <= 16  # 3:1


def test_with_fair_queueing_off_claims_are_first_come(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_FEATURES = {**settings.ORCHESTRATOR_FEATURES, "fair_queueing": False}
    flood, other = key("flood"), key("other")
    for i in range(20):
        submit(f"flood {i}", caller=flood)
    latecomer = submit("other", caller=other)
    assert latecomer.fair_at == latecomer.created_at
    assert [row.pk for row in claims(21)][-1] == latecomer.pk


def test_an_idle_key_cannot_bank_credit() -> None:
    """Its clock is lifted to now: a key back from idle queues like a newcomer."""
    early, steady = key("early"), key("steady")
    first = submit("early", caller=early)
    an_hour_later = timezone.now() + timedelta(hours=1)
    with mock.patch("django.utils.timezone.now", return_value=an_hour_later):
        later = submit("early again", caller=early)
        newcomer = submit("steady", caller=steady)
    assert (later.fair_at - first.fair_at).total_seconds() > 3000
    assert abs((later.fair_at - newcomer.fair_at).total_seconds()) < 1


def test_priority_still_comes_first() -> None:
    flood = key("flood")
    for i in range(10):
        submit(f"normal {i}", caller=flood)
    urgent = submit("high", caller=flood, priority=9)
    assert claims(1)[0].pk == urgent.pk


# --- aging: no tier starves -----------------------------------------------------


class Clock:
    """A frozen clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = timezone.now()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.mark.parametrize("aging", [60.0, 0.0])
def test_a_stream_of_high_never_delays_a_low_past_its_aging_bound(
    settings,
    aging: float,  # type: ignore[no-untyped-def]
) -> None:
    """Highs arrive faster than they are served, for ever; with aging the low one
    moves up a tier every minute and runs within two of them (plus a step)."""
    settings.ORCHESTRATOR_QUEUE_AGING_AFTER_SECONDS = aging
    clock = Clock()
    with (
        mock.patch("django.utils.timezone.now", lambda: clock.now),
        mock.patch("time.time", lambda: clock.now.timestamp()),
    ):
        low = submit("low", priority=1)
        ran_at = None
        for step in range(30):  # 10 s a step: 5 minutes
            submit(f"high {step}a", priority=9)
            submit(f"high {step}b", priority=9)
            reap_once()
            [claimed] = claims(1)
            if claimed.pk == low.pk:
                ran_at = step * 10
                break
            # The worker finishes it (no lease runs out on the moving clock).
            InferenceRequest.objects.filter(pk=claimed.pk).update(status=Status.COMPLETED)
            clock.advance(10)
    if aging:  # two promotions after its turn (its stamp: arrival + one cost), a step each
        assert ran_at is not None and ran_at <= 2 * aging + 2 * 10
        low.refresh_from_db()
        assert (low.priority, low.priority_requested) == (9, 1)  # promoted twice
    else:
        assert ran_at is None  # without aging it starves: the test can fail


# --- caps, waits and ceilings --------------------------------------------------------


def test_a_full_tier_refuses_while_others_admit(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_QUEUE_MAX_PENDING = {"low": 100}
    for i in range(100):
        submit(f"low {i}", priority=1)

    def post(priority: str) -> Any:
        body = {"prompt": "one more", "priority": priority}
        return client.post("/api/v1/infer", json.dumps(body), content_type="application/json")

    refused = post("low")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1
    admitted = post("high")
    assert admitted.status_code == 202 and admitted.headers["X-Priority-Applied"] == "high"
    assert post("normal").status_code == 202


def test_a_tier_s_maximum_wait_expires_what_waited_too_long(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_QUEUE_MAX_WAIT_SECONDS = {"low": 30}
    waited = submit("old low", priority=2)
    fresh = submit("new low", priority=2)
    normal = submit("old normal", priority=5)
    past = timezone.now() - timedelta(seconds=31)
    InferenceRequest.objects.filter(pk__in=[waited.pk, normal.pk]).update(created_at=past)
    reap_once()
    statuses = {r.pk: (r.status, r.error_code) for r in InferenceRequest.objects.all()}
    assert statuses[waited.pk] == (Status.EXPIRED, "queue_timeout")
    assert statuses[fresh.pk] == statuses[normal.pk] == (Status.PENDING, "")


def test_a_key_s_ceiling_clamps_and_says_so(client: Client) -> None:
    _, secret = ApiKey.objects.create_key(name="capped-2", max_priority=5)
    before = metrics.PRIORITY_CLAMPED._value.get()
    response = client.post(
        "/api/v1/infer",
        json.dumps({"prompt": "urgent!", "priority": "high"}),
        content_type="application/json",
        headers={"X-API-Key": secret},
    )
    assert response.status_code == 202 and response.headers["X-Priority-Applied"] == "normal"
    body = response.json()
    assert (body["priority"], body["priority_requested"]) == (5, 9)
    assert metrics.PRIORITY_CLAMPED._value.get() == before + 1


def test_background_is_a_tier_name(client: Client) -> None:
    response = client.post(
        "/api/v1/infer",
        json.dumps({"prompt": "whenever", "priority": "background"}),
        content_type="application/json",
    )
    assert response.status_code == 202 and response.json()["priority"] == 0
    assert response.headers["X-Priority-Applied"] == "background"


def test_the_queue_s_oldest_wait_is_a_metric(client: Client) -> None:
    old = submit("waiting", priority=1)
    InferenceRequest.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - timedelta(seconds=90)
    )
    text = client.get("/metrics").content.decode()
    line = next(
        line
        for line in text.splitlines()
        if line.startswith('orchestrator_queue_oldest_age_seconds{priority="1"}')
    )
    assert 89 < float(line.split()[-1]) < 120


def test_the_stamp_fails_open_without_redis(settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    admission.reset()
    request = services.submit_request(services.Submission(prompt="p"))[0]
    assert request.status == "pending"
    assert abs((request.fair_at - request.created_at).total_seconds()) < 1


def test_a_flood_s_own_backlog_does_not_age_past_another_key(settings) -> None:  # type: ignore[no-untyped-def]
    """Aging counts from a request's fair turn: a minute-old flood whose turns are
    still ahead stays where it is, and a newcomer still goes next."""
    settings.ORCHESTRATOR_QUEUE_AGING_AFTER_SECONDS = 60
    flood, other = key("flood"), key("other")
    clock = Clock()
    with mock.patch("django.utils.timezone.now", lambda: clock.now):
        for i in range(100):
            submit(f"flood {i}", caller=flood)
        clock.advance(70)
        reap_once()
        promoted = InferenceRequest.objects.filter(promoted_at__isnull=False).count()
        newcomer = submit("other", caller=other)
        order = [row.pk for row in claims(101)]
    # Only those whose turn (1.26 s apart) came a minute ago: about 8, not 100 ...
    assert 1 <= promoted <= 8
    # ... and the newcomer goes ahead of every flood request whose turn is after its.
    later = InferenceRequest.objects.filter(api_key=flood.key, fair_at__gt=newcomer.fair_at)
    assert later.count() > 40
    assert all(
        order.index(newcomer.pk) < order.index(pk) for pk in later.values_list("pk", flat=True)
    )


def test_using_spare_capacity_costs_a_key_nothing_later(settings) -> None:  # type: ignore[no-untyped-def]
    """A key alone runs ahead of the clock as it uses what nobody else wants (its
    cost is an estimate); the lift to the served frontier means another key's
    burst still starts from there, not from "now", so the steady key is not buried."""
    steady, bursty = key("steady"), key("bursty")
    clock = Clock()
    with mock.patch("django.utils.timezone.now", lambda: clock.now):
        for i in range(300):  # one a second, each served at once
            done = submit(f"steady {i}", caller=steady)
            InferenceRequest.objects.filter(pk=done.pk).update(
                status=Status.COMPLETED, finished_at=clock.now
            )
            clock.advance(1)
        assert (done.fair_at - clock.now).total_seconds() > 30  # its clock ran ahead
        for i in range(100):
            submit(f"burst {i}", caller=bursty)
        mine = submit("steady again", caller=steady)
    assert mine.pk in {row.pk for row in claims(3)}


def test_aged_requests_do_not_fill_the_tier_they_moved_into(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_QUEUE_MAX_PENDING = {"normal": 10}
    for i in range(20):
        submit(f"low {i}", priority=1)
    InferenceRequest.objects.update(priority=5, promoted_at=timezone.now())  # aged
    body = {"prompt": "fresh normal", "priority": "normal"}
    response = client.post("/api/v1/infer", json.dumps(body), content_type="application/json")
    assert response.status_code == 202


def test_a_handed_back_request_keeps_its_place_past_the_tier_s_wait(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_QUEUE_MAX_WAIT_SECONDS = {"normal": 30}
    request = submit("ran, then handed back")
    held = InferenceRequest.objects.claim_next("w", 30)
    InferenceRequest.objects.release(held.pk, held.attempt)
    InferenceRequest.objects.filter(pk=request.pk).update(
        created_at=timezone.now() - timedelta(seconds=60)
    )
    reap_once()
    assert InferenceRequest.objects.get(pk=request.pk).status == Status.PENDING


def test_a_refused_slot_does_not_move_the_clock(settings) -> None:  # type: ignore[no-untyped-def]
    from inference import counters

    store = counters.MemoryStore()
    slot = counters.Slot("k", "a", limit=1, expires=9e9)
    assert store.admit(slot, counters.Clock("k:5", 2.0), now=100.0) == (1, 102.0)
    full = counters.Slot("k", "b", limit=1, expires=9e9)
    assert store.admit(full, counters.Clock("k:5", 2.0), now=100.0) == (-1, 100.0)
    assert store.admit(counters.Slot("k", "c", 0, 9e9), counters.Clock("k:5", 2.0), 100.0) == (
        0,
        104.0,
    )
