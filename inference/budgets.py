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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import BigIntegerField, Case, DecimalField, F, QuerySet, Sum, Value, When
from django.db.models.functions import Greatest

from inference import metrics
from inference.admission import Refusal
from inference.models import (
    ACTIVE_STATUSES,
    BudgetLedger,
    BudgetPeriod,
    CacheStatus,
    InferenceRequest,
    Status,
)

SERVED = (CacheStatus.HIT, CacheStatus.COLLAPSED)

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
            headers["x-budget-remaining-cost"] = plain(max(self.cost, Decimal(0)))
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


def reserve(
    caller: Caller, arrived: datetime, asks: Sequence[tuple[int, Decimal]]
) -> tuple[list[dict[str, Any]], Remaining | None]:
    """Reserve the (tokens, cost) each of ``asks`` may take of the caller's budget
    for requests arriving at ``arrived``, all or none, or refuse (429
    ``budget_exceeded``). Call inside the transaction that stores the requests:
    the key's ledger stays locked until it commits. Returns each request's budget
    fields, and what is left (None: no budget)."""
    budget = budget_of(caller)
    if budget is None:
        return [{} for _ in asks], None
    tokens = sum(ask_tokens for ask_tokens, _ in asks)
    cost = sum((ask_cost for _, ask_cost in asks), Decimal(0))
    start, end = budget.bounds(arrived)
    if (budget.tokens and tokens > budget.tokens) or (budget.cost and cost > budget.cost):
        raise larger_than(budget, tokens, cost)
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
    fields = [
        {"budget_period": start, "budget_reserved_tokens": t, "budget_reserved_cost": c}
        for t, c in asks
    ]
    return fields, left


def larger_than(budget: Budget, tokens: int, cost: Decimal) -> Refusal:
    """A 400: this request could not fit even an untouched budget."""
    if budget.tokens and tokens > budget.tokens:
        ask, whole = f"{tokens} tokens", f"{budget.tokens} tokens"
    else:
        ask, whole = f"a cost of {plain(cost)}", plain(budget.cost)
    message = (
        f"This request may take {ask}, more than the key's whole budget of {whole} per "
        f"{budget.period}: lower max_tokens or shorten the prompt."
    )
    return Refusal(400, "request_exceeds_budget", message, param="max_tokens")


def plain(amount: Decimal) -> str:
    """A cost as people write it: 0.5, 12, 0.00000123 (not 0E-8 or 12.00000000)."""
    text = f"{amount:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


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
        spent = f"{plain(used_cost)} of {plain(budget.cost)} used"
        ask = f"this request may cost {plain(cost)}"
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
    unsettled = InferenceRequest.objects.filter(
        api_key_id=prefix, budget_period__gte=start, budget_period__lt=end, budget_settled=False
    )
    grace = now - timedelta(seconds=settings.ORCHESTRATOR_LEASE_SECONDS)
    _fold(ledger, unsettled.exclude(status__in=ACTIVE_STATUSES).filter(finished_at__lt=grace))
    live = unsettled.aggregate(tokens=Sum(LIVE_TOKENS), cost=Sum(LIVE_COST))
    # A period's other ledgers: those of a shorter period the key had before.
    others = (
        BudgetLedger.objects.filter(
            api_key_id=prefix, period_start__gte=start, period_start__lt=end
        )
        .exclude(pk=ledger.pk)
        .aggregate(tokens=Sum("tokens"), cost=Sum("cost"))
    )
    return (
        ledger.tokens + (live["tokens"] or 0) + (others["tokens"] or 0),
        ledger.cost + (live["cost"] or 0) + (others["cost"] or 0),
    )


# What a request not folded yet holds of its budget: its reservation while it
# runs; what it consumed once finished (a cache hit or follower: nothing). A
# cancelled or expired one holds the larger of the two: its worker may still be
# about to record what it had consumed.
BILLED_TOKENS = Case(
    When(cache_status__in=SERVED, then=Value(0)),
    default=F("prompt_tokens") + F("completion_tokens"),
    output_field=BigIntegerField(),
)
ENDED_UNDER_A_WORKER = (Status.CANCELLED, Status.EXPIRED)
LIVE_TOKENS = Case(
    When(status__in=ACTIVE_STATUSES, then=F("budget_reserved_tokens")),
    When(
        status__in=ENDED_UNDER_A_WORKER,
        then=Greatest(F("budget_reserved_tokens"), BILLED_TOKENS),
    ),
    default=BILLED_TOKENS,
    output_field=BigIntegerField(),
)
LIVE_COST = Case(
    When(status__in=ACTIVE_STATUSES, then=F("budget_reserved_cost")),
    When(status__in=ENDED_UNDER_A_WORKER, then=Greatest(F("budget_reserved_cost"), F("cost"))),
    default=F("cost"),
    output_field=DecimalField(max_digits=16, decimal_places=8),
)


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
    totals = before.aggregate(tokens=Sum(BILLED_TOKENS), cost=Sum("cost"))
    try:
        with transaction.atomic():  # another process may be creating it too
            BudgetLedger.objects.create(
                api_key_id=prefix,
                period_start=start,
                tokens=totals["tokens"] or 0,
                cost=totals["cost"] or 0,
            )
    except IntegrityError:
        pass
    return ledgers.get(api_key_id=prefix, period_start=start)


def _fold(ledger: BudgetLedger, finished: QuerySet[InferenceRequest]) -> None:
    """Add finished requests to the (locked) ledger, each once: they are claimed
    row by row (FOR UPDATE re-reads budget_settled after waiting for a concurrent
    fold, which then has them)."""
    claimed = list(
        finished.select_for_update()
        .annotate(billed=BILLED_TOKENS)
        .values_list("pk", "billed", "cost")
    )
    if not claimed:
        return
    ledger.tokens += sum(billed for _, billed, _ in claimed)
    ledger.cost += sum((cost for _, _, cost in claimed), Decimal(0))
    ledger.save(update_fields=["tokens", "cost"])
    InferenceRequest.objects.filter(pk__in=[pk for pk, _, _ in claimed]).update(budget_settled=True)
