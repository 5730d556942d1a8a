"""A feature flag flipped in the admin reaches a worker in another process: at
once through the channel layer's announcement, at the latest after
``features.refresh_seconds`` (1 s here)."""

from __future__ import annotations

import time

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import Client

from inference.models import FeatureFlag
from tests.services.conftest import Stack

pytestmark = pytest.mark.services


def ask(stack: Stack) -> dict:
    rid = httpx.post(f"{stack.base_url}/api/v1/infer", json={"prompt": "What is Zorp?"}).json()
    answer = httpx.get(
        f"{stack.base_url}/api/v1/result/{rid['request_id']}", params={"wait": 10}, timeout=15
    )
    assert answer.status_code == 200
    return answer.json()


def test_a_flag_flipped_in_the_admin_stops_a_stage_in_another_process(
    stack: Stack, db_access
) -> None:  # type: ignore[no-untyped-def]
    stack.start_worker(concurrency=4)
    document = {"title": "Zorp", "text": "Zorp is a blue moon of Quux.", "source": "zorp"}
    assert httpx.post(f"{stack.base_url}/api/v1/documents/", json=document).status_code == 201
    admin = User.objects.create_superuser("flags-admin", "a@example.com", "pw")
    try:
        before = ask(stack)
        assert before["passages"] and before["skipped_stages"] == []
        client = Client()
        client.force_login(admin)
        added = client.post(
            "/admin/inference/featureflag/add/", {"name": "rag", "percent": 100}
        )  # "enabled" unchecked: off
        assert added.status_code == 302, added.content[:500]
        flipped = time.monotonic()
        while (after := ask(stack))["skipped_stages"] != ["rag"]:
            assert time.monotonic() - flipped < 3, "the worker never saw the flag"
        assert after["passages"] == []
    finally:
        FeatureFlag.objects.all().delete()
        admin.delete()
        stack.stop_workers()
