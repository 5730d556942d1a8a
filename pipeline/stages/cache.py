from __future__ import annotations

import logging

from channels.db import database_sync_to_async
from django.conf import settings

from inference import flags, metrics
from inference.models import CacheStatus, InferenceRequest
from pipeline.cache import Policy, key_for, policy_for
from pipeline.chunks import LeaseLost
from pipeline.context import PipelineContext
from pipeline.stages.base import Stage

logger = logging.getLogger(__name__)

# A leader that finishes while a request tries to follow it has stored its answer
# (or not): look again this many times before generating alone.
ROUNDS = 3


def stored(key: str, policy: Policy) -> InferenceRequest | None:
    return InferenceRequest.objects.cache_entry(key, policy.max_age)


def decide(ctx: PipelineContext, policy: Policy) -> None:
    """Look the assembled request up, then lead or follow identical requests in
    flight (one thread hop: it is all database work)."""
    request = ctx.request
    key = ctx.cache_key = key_for(ctx)
    requests = InferenceRequest.objects
    role = ""
    for _ in range(ROUNDS):
        if policy.read and (entry := stored(key, policy)) is not None:
            ctx.served_by, ctx.cache_status = entry, CacheStatus.HIT
            return
        if not policy.coalesce:
            break
        role, leader = requests.lead_or_follow(
            request.id, request.attempt, key, settings.ORCHESTRATOR_DEDUP_MAX_FOLLOWERS
        )
        if role == "lost":
            raise LeaseLost(str(request.id))
        if role != "gone":
            metrics.DEDUP.labels(role).inc()
        if role == "follower":
            ctx.following, ctx.cache_status = leader, CacheStatus.COLLAPSED
            return
        if role == "leader" and policy.read and (entry := stored(key, policy)) is not None:
            # Its answer was stored between the lookup and the leadership: use it.
            requests.held_by(request.id, request.attempt).update(dedup_key=None)
            ctx.served_by, ctx.cache_status = entry, CacheStatus.HIT
            return
        if role != "gone":
            break
    # Whoever follows it (a leader run again keeps its followers) gets its stream.
    ctx.sink.share_with_followers(key if role == "leader" else None)
    ctx.cache_status = CacheStatus.MISS
    ctx.cache_ttl = policy.ttl if policy.write else None


class CacheStage(Stage):
    """Answer from the response cache, or ride on an identical request that is
    generating already (in-flight dedup); otherwise keep the key, so that the
    answer can be stored. Runs after Assemble: the key covers the messages the
    model would be shown. A cache that fails is a miss, never a failed request."""

    name = "cache"

    async def run(self, ctx: PipelineContext) -> PipelineContext:
        key_prefix = ctx.request.api_key_id
        policy = policy_for(
            ctx.request,
            cache_on=await flags.aenabled("cache", key_prefix),
            dedup_on=await flags.aenabled("dedup", key_prefix),
        )
        ctx.cache_status = policy.skipped
        if policy.keyed:
            try:
                await database_sync_to_async(decide)(ctx, policy)
            except LeaseLost:
                raise
            except Exception:
                logger.warning("cache lookup failed: generating", exc_info=True)
                metrics.CACHE_ERRORS.labels("lookup").inc()
                ctx.cache_key, ctx.cache_status, ctx.cache_ttl = None, CacheStatus.MISS, None
        metrics.CACHE_LOOKUPS.labels(ctx.cache_status).inc()
        return ctx
