"""Budgets: the tokens and/or cost a key may consume per period (a UTC day or
month, or fixed windows from the key's creation), checked at admission and
settled by the requests' own completion.

Admission reserves the most a request can consume: its text at four characters a
token plus its ``max_tokens``, at the price of the model it names (or the dearest
its backend may run). What a period has used is

    its ledger (finished requests, folded in)
    + each of its requests not folded yet: its reservation while it runs,
      what it consumed once it has finished (a cache hit or follower: nothing)

so a completion settles the moment its row commits, a re-run after a worker is
killed is one row counted once, and nothing is lost when Redis restarts: the
budget lives with the requests, in the database. A request is folded into its
period's ledger a lease after it finished (a cancelled request's worker records
what it had consumed by then), by the next admission of its key.

Admission is atomic per key across every web process: the ledger row stays
locked from the check to the request's INSERT, in one transaction. A request
admitted within the budget runs to its end even if it then consumes more than
was reserved (a prompt longer in tokens than estimated); the next is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum

from inference import metrics
from inference.admission import Refusal
from inference.models import (
    ACTIVE_STATUSES,
    BudgetLedger,
    BudgetPeriod,
    CacheStatus,
    InferenceRequest,
)

if TYPE_CHECKING:
    from inference.auth import Caller


@dataclass(frozen=True)
class Budget:
    """A key's budget: ``tokens`` and ``cost`` per period (0: not limited)."""

    tokens: int
    cost: Decimal
    period: str
    window: timedelta
    anchor: datetime  # the key's creation: window periods count from it

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """The period ``now`` falls in: [start, end)."""
        now = now.astimezone(UTC)
        if self.period == BudgetPeriod.DAY:
            start = now.replace(hour=0, minute=0, second=0, microsecond=0)
            return start, start + timedelta(days=1)
        if self.period == BudgetPeriod.MONTH:
            start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            following = (start + timedelta(days=32)).replace(day=1)
            return start, following
        start = self.anchor + (now - self.anchor) // self.window * self.window
        return start, start + self.window


@dataclass(frozen=True)
class Remaining:
    """What a budget has left after admitting a request, until ``reset``."""

    tokens: int | None  # None: no token budget
    cost: Decimal | None  # None: no cost budget
    reset: datetime

    def headers(self) -> dict[str, str]:
        headers = {"x-budget-reset": self.reset.isoformat().replace("+00:00", "Z")}
        if self.tokens is not None:
            headers["x-budget-remaining-tokens"] = str(max(self.tokens, 0))
        if self.cost is not None:
            headers["x-budget-remaining-cost"] = str(max(self.cost, Decimal(0)))
        return headers


def budget_headers(request: InferenceRequest) -> dict[str, str]:
    """What the key's budget has left after admitting ``request`` (a new submit's)."""
    return request.budget_left.headers() if request.budget_left else {}


def budget_of(caller: Caller) -> Budget | None:
    """The caller's budget: its key's, or the server default for what the key
    leaves blank (staff and callers without a key have none)."""
    key = caller.key
    if caller.staff or key is None:
        return None
    tokens = key.budget_tokens
    tokens = settings.ORCHESTRATOR_BUDGET_TOKENS if tokens is None else tokens
    cost = key.budget_cost
    cost = Decimal(str(settings.ORCHESTRATOR_BUDGET_COST)) if cost is None else cost
    if not tokens and not cost:
        return None
    hours = key.budget_window_hours or settings.ORCHESTRATOR_BUDGET_WINDOW_HOURS
    return Budget(
        tokens=int(tokens),
        cost=cost,
        period=key.budget_period or settings.ORCHESTRATOR_BUDGET_PERIOD,
        window=timedelta(hours=hours),
        anchor=key.created,
    )


def reserve(caller: Caller, arrived: datetime, tokens: int, cost: Decimal) -> dict[str, Any]:
    """Reserve ``tokens`` and ``cost`` of the caller's budget for a request arriving
    at ``arrived``, or refuse it (429 ``budget_exceeded``). Call inside the
    transaction that stores the request: the key's ledger stays locked until it
    commits. Returns the request's budget fields, and what is left (``left``)."""
    budget = budget_of(caller)
    if budget is None:
        return {}
    start, end = budget.bounds(arrived)
    used_tokens, used_cost = used(caller.key_prefix or "", start, end, arrived)
    over_tokens = budget.tokens and used_tokens + tokens > budget.tokens
    over_cost = budget.cost and used_cost + cost > budget.cost
    if over_tokens or over_cost:
        metrics.REFUSED.labels("budget_exceeded").inc()
        raise exceeded(budget, end, arrived, used_tokens, used_cost, tokens, cost)
    left = Remaining(
        tokens=budget.tokens - used_tokens - tokens if budget.tokens else None,
        cost=budget.cost - used_cost - cost if budget.cost else None,
        reset=end,
    )
    fields = {"budget_period": start, "budget_reserved_tokens": tokens}
    return {**fields, "budget_reserved_cost": cost, "left": left}


def exceeded(
    budget: Budget,
    end: datetime,
    now: datetime,
    used_tokens: int,
    used_cost: Decimal,
    tokens: int,
    cost: Decimal,
) -> Refusal:
    """The 429: not worth retrying before ``end`` (``x-should-retry: false``)."""
    if budget.tokens and used_tokens + tokens > budget.tokens:
        spent = f"{used_tokens} of {budget.tokens} tokens used"
        ask = f"this request may take {tokens}"
    else:
        spent = f"{used_cost} of {budget.cost} used"
        ask = f"this request may cost {cost}"
    reset = end.isoformat().replace("+00:00", "Z")
    message = f"This key's budget for the period is spent: {spent}, {ask}. It resets at {reset}."
    left = Remaining(None, None, end)
    return Refusal(
        429,
        "budget_exceeded",
        message,
        retry_after=max(1, math.ceil((end - now).total_seconds())),
        headers={**left.headers(), "x-should-retry": "false"},
        details={"reset_at": reset},
    )


def used(prefix: str, start: datetime, end: datetime, now: datetime) -> tuple[int, Decimal]:
    """Tokens and cost the key's period [start, end) has used (or holds reserved),
    with its ledger locked; finished requests a lease old are folded in first."""
    ledger = _locked_ledger(prefix, start, end)
    grace = now - timedelta(seconds=settings.ORCHESTRATOR_LEASE_SECONDS)
    unsettled = list(
        InferenceRequest.objects.filter(
            api_key_id=prefix, budget_period__isnull=False, budget_settled=False
        ).only(
            "status",
            "finished_at",
            "budget_period",
            "budget_reserved_tokens",
            "budget_reserved_cost",
            "prompt_tokens",
            "completion_tokens",
            "cost",
            "cache_status",
        )
    )
    ripe = [r for r in unsettled if r.status not in ACTIVE_STATUSES and _ended(r) < grace]
    _fold(ledger, ripe)
    folded = {r.pk for r in ripe}
    live = [r for r in unsettled if r.budget_period == start and r.pk not in folded]
    return (
        ledger.tokens + sum(_tokens(r) for r in live),
        ledger.cost + sum((_cost(r) for r in live), Decimal(0)),
    )


def _ended(row: InferenceRequest) -> datetime:
    return row.finished_at or datetime.max.replace(tzinfo=UTC)


def _tokens(row: InferenceRequest) -> int:
    return row.budget_reserved_tokens if row.status in ACTIVE_STATUSES else row.billed_tokens


def _cost(row: InferenceRequest) -> Decimal:
    return row.budget_reserved_cost if row.status in ACTIVE_STATUSES else row.cost


def _locked_ledger(prefix: str, start: datetime, end: datetime) -> BudgetLedger:
    """The key's ledger for the period, locked until the transaction ends. A new
    one starts with what the key's requests from before its budget consumed."""
    ledgers = BudgetLedger.objects.select_for_update()
    ledger = ledgers.filter(api_key_id=prefix, period_start=start).first()
    if ledger is not None:
        return ledger
    before = InferenceRequest.objects.filter(
        api_key_id=prefix, budget_period__isnull=True, created_at__gte=start, created_at__lt=end
    ).exclude(status__in=ACTIVE_STATUSES)
    billed = ~Q(cache_status__in=[CacheStatus.HIT, CacheStatus.COLLAPSED])
    totals = before.aggregate(
        prompt=Sum("prompt_tokens", filter=billed),
        completion=Sum("completion_tokens", filter=billed),
        cost=Sum("cost"),
    )
    try:
        with transaction.atomic():  # another process may be creating it too
            BudgetLedger.objects.create(
                api_key_id=prefix,
                period_start=start,
                tokens=(totals["prompt"] or 0) + (totals["completion"] or 0),
                cost=totals["cost"] or 0,
            )
    except IntegrityError:
        pass
    return ledgers.get(api_key_id=prefix, period_start=start)


def _fold(ledger: BudgetLedger, rows: list[InferenceRequest]) -> None:
    """Add finished requests to their periods' ledgers, once each."""
    if not rows:
        return
    periods: dict[datetime, tuple[int, Decimal]] = {}
    for row in rows:
        tokens, cost = periods.get(row.budget_period, (0, Decimal(0)))  # type: ignore[arg-type]
        periods[row.budget_period] = (tokens + row.billed_tokens, cost + row.cost)  # type: ignore[index]
    for start, (tokens, cost) in periods.items():
        if start == ledger.period_start:
            ledger.tokens += tokens
            ledger.cost += cost
            ledger.save(update_fields=["tokens", "cost"])
        else:  # a request from an earlier period, finishing late
            earlier, _ = BudgetLedger.objects.get_or_create(
                api_key_id=ledger.api_key_id, period_start=start
            )
            BudgetLedger.objects.filter(pk=earlier.pk).update(
                tokens=F("tokens") + tokens, cost=F("cost") + cost
            )
    InferenceRequest.objects.filter(pk__in=[row.pk for row in rows]).update(budget_settled=True)
