"""A Hypothesis state machine over the request lifecycle (DESIGN §4).

Two workers submit, duplicate, claim, heartbeat, complete, crash, cancel and reap
while the clock jumps. After every step: a request completes at most once and
only by its current attempt; terminal states absorb; attempts never decrease;
no expired lease survives a reap; one idempotency key is one row.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from inference import services
from inference.models import TERMINAL_STATUSES, InferenceRequest, Outcome

LEASE = 30
WORKERS = st.sampled_from(["worker-a", "worker-b"])
KEYS = st.one_of(st.none(), st.sampled_from(["k1", "k2", "k3"]))
# The clock the lifecycle code sees is real time plus this offset.
CLOCK = {"offset": timedelta()}
OUTCOME = Outcome(
    result="done", prompt_tokens=1, completion_tokens=1, timings={}, backend_used="echo"
)


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        InferenceRequest.objects.all().delete()
        CLOCK["offset"] = timedelta()
        self.held: dict[str, list[tuple[object, int]]] = {"worker-a": [], "worker-b": []}
        self.completions: Counter[object] = Counter()
        self.attempts: dict[object, int] = {}
        self.terminal: dict[object, str] = {}

    @rule(key=KEYS)
    def submit(self, key: str | None) -> None:
        services.submit_request(services.Submission(prompt="p", idempotency_key=key))

    @rule(worker=WORKERS)
    def claim(self, worker: str) -> None:
        row = InferenceRequest.objects.claim_next(worker, LEASE)
        if row is not None:
            self.held[worker].append((row.pk, row.attempt))

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        _, (pk, attempt) = self._pick_held(data)
        if InferenceRequest.objects.heartbeat(pk, attempt, LEASE):
            row = InferenceRequest.objects.get(pk=pk)
            assert (row.status, row.attempt) == ("processing", attempt)

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        worker, (pk, attempt) = self._pick_held(data)
        current = InferenceRequest.objects.get(pk=pk)
        if InferenceRequest.objects.complete(pk, attempt, OUTCOME) is not None:
            assert current.attempt == attempt and current.status == "processing"
            self.completions[pk] += 1
        self.held[worker].remove((pk, attempt))

    @rule(worker=WORKERS)
    def crash(self, worker: str) -> None:
        self.held[worker] = []  # it forgets; its leases stay until they expire

    @rule(seconds=st.integers(min_value=1, max_value=400))
    def advance_clock(self, seconds: int) -> None:
        CLOCK["offset"] += timedelta(seconds=seconds)

    @precondition(lambda self: any(self.held.values()))
    @rule(worker=WORKERS)
    def stall_then_takeover(self, worker: str) -> None:
        """A worker stalls past its lease; the reaper requeues; ``worker`` claims.

        The stalled worker keeps its (now stale) attempt and may still try to
        complete it: the fence must refuse."""
        CLOCK["offset"] += timedelta(seconds=LEASE + 1)
        self.reap()
        self.claim(worker)

    @rule()
    def reap(self) -> None:
        InferenceRequest.objects.reclaim_expired_leases()
        InferenceRequest.objects.expire_overdue()
        assert not InferenceRequest.objects.filter(
            status="processing", lease_expires_at__lt=timezone.now()
        ).exists()

    @precondition(lambda self: InferenceRequest.objects.exists())
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        pks = list(InferenceRequest.objects.values_list("pk", flat=True))
        InferenceRequest.objects.cancel(data.draw(st.sampled_from(pks)))

    def _pick_held(self, data: st.DataObject) -> tuple[str, tuple[object, int]]:
        worker = data.draw(st.sampled_from([w for w, held in self.held.items() if held]))
        return worker, data.draw(st.sampled_from(self.held[worker]))

    @invariant()
    def the_lifecycle_holds(self) -> None:
        for row in InferenceRequest.objects.all():
            assert self.completions[row.pk] <= 1
            assert (row.status == "completed") == (self.completions[row.pk] == 1)
            assert row.attempt >= self.attempts.get(row.pk, 0)
            self.attempts[row.pk] = row.attempt
            if row.pk in self.terminal:
                assert row.status == self.terminal[row.pk], "a terminal state changed"
            if row.status in TERMINAL_STATUSES:
                self.terminal[row.pk] = row.status
        keys = Counter(
            InferenceRequest.objects.exclude(idempotency_key=None).values_list(
                "idempotency_key", flat=True
            )
        )
        assert all(count == 1 for count in keys.values())


@pytest.mark.django_db
def test_the_request_lifecycle_state_machine(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + CLOCK["offset"])
    Lifecycle.TestCase.settings = hypothesis_settings(
        max_examples=60, stateful_step_count=40, deadline=None
    )
    Lifecycle.TestCase().runTest()
