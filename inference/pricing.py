"""What a request's tokens cost, from the configured price table
(``models.prices``: "backend" or "backend/model" -> per-million prices)."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings

from inference.models import canonical_sha256

MILLION = Decimal(1_000_000)
CENTS_OF_A_CENT = Decimal("0.00000001")  # the cost column's precision


def price_version() -> str:
    """The price table's fingerprint, stored with each cost (so a cost can be told
    from one computed under other prices); empty when nothing is priced."""
    prices = settings.ORCHESTRATOR_PRICES
    return canonical_sha256(prices)[:12] if prices else ""


def cost_of(backend: str, model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """The model's price for these tokens; 0 when it has none (the local model)."""
    prices = settings.ORCHESTRATOR_PRICES
    price = prices.get(f"{backend}/{model}") or prices.get(backend)
    return _priced(price, prompt_tokens, completion_tokens)


def most_cost_of(backend: str, model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """The most these tokens can cost: ``cost_of`` when the model is named; else
    (the backend's own model answers, not known here) the backend's price, or its
    dearest model's. A budget reserves this at admission."""
    prices = settings.ORCHESTRATOR_PRICES
    if model or backend in prices:
        return cost_of(backend, model, prompt_tokens, completion_tokens)
    dearest = [price for name, price in prices.items() if name.startswith(f"{backend}/")]
    return max(
        (_priced(price, prompt_tokens, completion_tokens) for price in dearest),
        default=Decimal(0),
    )


def _priced(price: dict[str, float] | None, prompt_tokens: int, completion_tokens: int) -> Decimal:
    if not price:
        return Decimal(0)
    cost = (
        Decimal(str(price["input_per_million"])) * prompt_tokens
        + Decimal(str(price["output_per_million"])) * completion_tokens
    ) / MILLION
    return cost.quantize(CENTS_OF_A_CENT)
