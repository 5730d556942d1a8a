"""The admin request list on PostgreSQL with a million rows: fast, no N+1."""

from __future__ import annotations

import time

import pytest
from django.core.management import call_command
from django.test import Client

from inference.models import InferenceRequest

# Transactional: the million rows are committed, then TRUNCATEd by the teardown
# flush. A rolled-back insert would leave a million dead tuples bloating the table
# for the service tests that follow.
pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

URL = "/admin/inference/inferencerequest/"
PAGES = [
    "",
    "?status__exact=failed",
    "?status__exact=completed&backend=echo",
    "?transport=rest",
    "?created_at__gte=2000-01-01+00:00:00%2B00:00&created_at__lt=2100-01-01+00:00:00%2B00:00",
    "?p=3",
]


def test_the_request_list_and_its_filters_answer_in_under_half_a_second(
    admin_client: Client, django_assert_max_num_queries
) -> None:  # type: ignore[no-untyped-def]
    call_command("seed_requests", "--count", "1000000")
    assert InferenceRequest.objects.count() >= 1_000_000
    admin_client.get(URL)  # warm the caches once
    timings = {}
    for query in PAGES:
        began = time.perf_counter()
        response = admin_client.get(URL + query)
        timings[query] = time.perf_counter() - began
        assert response.status_code == 200
    assert max(timings.values()) < 0.5, timings
    one = InferenceRequest.objects.order_by("-created_at").first()
    began = time.perf_counter()
    assert str(one.pk) in admin_client.get(URL, {"q": str(one.pk)}).content.decode()
    assert time.perf_counter() - began < 0.5
    with django_assert_max_num_queries(12):
        admin_client.get(URL)
