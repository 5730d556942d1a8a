"""The reaper: recovers requests whose worker vanished, expires overdue ones and
ages waiting ones up a tier.

Every engine runs it on a timer; on PostgreSQL a transaction-scoped advisory
lock lets one of them do the work per round (SQLite has one writer anyway).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction

from inference import metrics
from inference.models import InferenceRequest

logger = logging.getLogger(__name__)

# An arbitrary constant naming the reaper's advisory lock.
REAPER_LOCK_KEY = 0x0E0C_4E57


@dataclass(frozen=True)
class ReapReport:
    leader: bool = False
    requeued: int = 0
    failed: int = 0
    expired: int = 0
    stale_pending: bool = False
    orphans: int = 0

    @property
    def work_waiting(self) -> bool:
        return self.requeued > 0 or self.orphans > 0 or self.stale_pending


def _take_leadership() -> bool:
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [REAPER_LOCK_KEY])
        return bool(cursor.fetchone()[0])


def reap_once() -> ReapReport:
    with transaction.atomic():
        if not _take_leadership():
            return ReapReport()
        requests = InferenceRequest.objects
        requeued, failed = requests.reclaim_expired_leases()
        expired = requests.expire_overdue()
        expired += requests.expire_queued(settings.ORCHESTRATOR_QUEUE_MAX_WAIT_SECONDS)
        if aging := settings.ORCHESTRATOR_QUEUE_AGING_AFTER_SECONDS:
            promoted = requests.promote_waiting(aging)
        else:
            promoted = {}
        # Followers whose leader ended (expired just now, say) without answering them.
        orphans = requests.release_orphans()
        # A pending row older than a poll interval missed its doorbell (or every
        # worker is busy): ring again so idle workers look now.
        stale = requests.pending_older_than(settings.ORCHESTRATOR_POLL_INTERVAL_SECONDS)
    report = ReapReport(True, requeued, failed, expired, stale, orphans)
    metrics.LEASE_RECLAIMS.labels("requeued").inc(requeued)
    metrics.LEASE_RECLAIMS.labels("worker_lost").inc(failed)
    metrics.LEASE_RECLAIMS.labels("expired").inc(expired)
    metrics.DEDUP.labels("detached").inc(orphans)
    for (lower, upper), count in promoted.items():
        metrics.PRIORITY_PROMOTIONS.labels(lower, upper).inc(count)
    if requeued or failed or expired or orphans:
        logger.info("reaper: %s", report)
    return report
