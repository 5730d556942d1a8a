"""The admin: request list with filters and search, detail with timings and chunks."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from inference.models import InferenceRequest, Outcome
from tests.conftest import submit

pytestmark = pytest.mark.django_db

URL = "/admin/inference/inferencerequest/"
CHUNKS_URL = "/admin/inference/streamchunk/"


def cell(page: str, field: str) -> str:
    """The text of the first list cell of ``field``."""
    found = re.search(rf'<td class="field-{field}[^"]*">(.*?)</td>', page, re.S)
    assert found is not None, field
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(1)))


def completed(prompt: str = "a b") -> InferenceRequest:
    request = submit(prompt)
    held = InferenceRequest.objects.claim_next("w", 30)
    held.append_chunks(0, ["a", " b"])
    InferenceRequest.objects.complete(
        request.pk,
        held.attempt,
        Outcome(
            "a b",
            2,
            2,
            {
                "rag": 0.001,
                "assemble": 0.002,
                "inference": 0.5,
                "post": 0.0,
                "stream": 0.01,
                "first_token": 0.1,
            },
            "echo",
        ),
    )
    return InferenceRequest.objects.get(pk=request.pk)


def test_the_list_shows_requests_and_filters_by_status(admin_client: Client) -> None:
    done = completed()
    waiting = submit("still waiting")
    page = admin_client.get(URL, {"status__exact": "pending"}).content.decode()
    assert str(waiting.pk) in page and str(done.pk) not in page


def test_search_finds_by_id_session_and_prompt(admin_client: Client) -> None:
    target = submit("find the needle", session_id="sess-42")
    submit("other")
    for query in (str(target.pk), "sess-42", "needle"):
        page = admin_client.get(URL, {"q": query}).content.decode()
        assert str(target.pk) in page, query


def test_the_list_previews_prompt_and_result_with_key_tokens_and_duration_in_ms(
    admin_client: Client,
) -> None:
    from inference.models import ApiKey

    key, _ = ApiKey.objects.create_key(name="previewed")
    now = timezone.now()
    InferenceRequest.objects.create(
        api_key=key,
        prompt="first line\n\n   second line " + "long " * 100,
        result="an answer\nover lines " + "more " * 100,
        session_id="s",
        backend="echo",
        status="completed",
        prompt_tokens=7,
        completion_tokens=5,
        created_at=now - timedelta(milliseconds=1234),
        finished_at=now,
    )
    page = admin_client.get(URL).content.decode()
    prompt = cell(page, "prompt_preview")
    assert prompt.startswith("first line second line long") and prompt.endswith("…")
    assert len(prompt) <= 60
    result = cell(page, "result_preview")
    assert result.startswith("an answer over lines more") and "\n" not in result
    assert cell(page, "api_key") == "previewed" and cell(page, "tokens") == "12"
    assert cell(page, "duration_ms") == "1234"


def test_the_list_queries_do_not_grow_with_its_rows(admin_client: Client) -> None:
    from inference.models import ApiKey

    def listed(rows: int) -> int:
        for i in range(rows):
            key, _ = ApiKey.objects.create_key(name=f"k{rows}-{i}")
            InferenceRequest.objects.create(
                api_key=key, prompt=f"p{i}", result="r", session_id="s", backend="echo"
            )
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(URL).status_code == 200
        return len(queries)

    assert listed(1) == listed(20)


def test_a_short_id_finds_its_request_by_a_range_on_the_primary_key(
    admin_client: Client,
) -> None:
    target, other = submit("one"), submit("two")
    short = str(target.pk)[:8]
    assert not str(other.pk).startswith(short)
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(URL, {"q": short}).content.decode()
    assert str(target.pk) in page and str(other.pk) not in page
    searched = [q["sql"] for q in queries if "inference_inferencerequest" in q["sql"]]
    assert any("BETWEEN" in sql for sql in searched)
    assert not any("LIKE" in sql for sql in searched)  # no scan of the prompts
    for query in (str(target.pk), str(target.pk).upper(), str(target.pk)[:13]):
        page = admin_client.get(URL, {"q": query}).content.decode()
        assert str(target.pk) in page and str(other.pk) not in page, query


def test_a_hex_word_that_is_no_id_still_searches_the_prompts(admin_client: Client) -> None:
    order = submit("order 12345678 shipped")
    assert not str(order.pk).startswith("12345678")
    page = admin_client.get(URL, {"q": "12345678"}).content.decode()
    assert str(order.pk) in page


def test_the_list_runs_a_fixed_number_of_queries(
    admin_client: Client, django_assert_max_num_queries
) -> None:  # type: ignore[no-untyped-def]
    for i in range(30):
        submit(f"p{i}")
    with django_assert_max_num_queries(12):
        assert admin_client.get(URL).status_code == 200


def test_the_detail_shows_stage_timings(admin_client: Client) -> None:
    done = completed()
    page = admin_client.get(f"{URL}{done.pk}/change/").content.decode()
    assert "inference" in page and "500.0 ms" in page
    assert "first token after 100.0 ms" in page and "queued for" not in page


def test_the_detail_shows_the_streamed_text_as_one_block_and_links_the_chunks(
    admin_client: Client,
) -> None:
    request = submit("code please")
    held = InferenceRequest.objects.claim_next("w", 30)
    held.append_chunks(0, ["def f():\n", "    return 1\n", "\n", "f()"])
    page = admin_client.get(f"{URL}{request.pk}/change/").content.decode()
    # One block, newlines and indentation as streamed, not a table row per chunk.
    assert ">def f():\n    return 1\n\nf()</pre>" in page
    assert "Stream chunks" not in page and page.count("    return 1") == 1
    link = re.search(r'<a href="([^"]+)">4 chunks \(attempt 1\)</a>', page)
    assert link is not None
    chunks = admin_client.get(html.unescape(link.group(1))).content.decode()
    assert chunks.count('class="field-seq"') == 4 and "    return 1" in chunks


def test_a_chunk_list_shows_only_its_requests_chunks(admin_client: Client) -> None:
    done, _ = completed(), completed()  # two chunks each
    rows = 'class="field-seq"'
    assert admin_client.get(CHUNKS_URL).content.decode().count(rows) == 4
    page = admin_client.get(CHUNKS_URL, {"request__id__exact": str(done.pk)}).content.decode()
    assert page.count(rows) == 2


def test_the_detail_shows_times_to_the_millisecond_with_their_zone(admin_client: Client) -> None:
    done = completed()
    created = datetime(2026, 11, 30, 12, 3, 4, 567_891, tzinfo=UTC)
    InferenceRequest.objects.filter(pk=done.pk).update(
        created_at=created, finished_at=created + timedelta(milliseconds=1234)
    )
    page = admin_client.get(f"{URL}{done.pk}/change/").content.decode()
    assert "2026-11-30 12:03:04.567 UTC" in page and "2026-11-30 12:03:05.801 UTC" in page


def test_a_request_is_read_only_but_its_actions_still_work(admin_client: Client) -> None:
    waiting = submit("keep me")
    page = admin_client.get(f"{URL}{waiting.pk}/change/").content.decode()
    for button in ("_save", "_continue", "_addanother"):
        assert f'name="{button}"' not in page, button
    edit = admin_client.post(f"{URL}{waiting.pk}/change/", {"prompt": "changed"})
    assert edit.status_code == 403
    assert InferenceRequest.objects.get(pk=waiting.pk).prompt == "keep me"
    admin_client.post(URL, {"action": "cancel_selected", "_selected_action": [str(waiting.pk)]})
    assert InferenceRequest.objects.get(pk=waiting.pk).status == "cancelled"


def test_the_cancel_action_cancels_active_requests(admin_client: Client) -> None:
    waiting = submit()
    admin_client.post(URL, {"action": "cancel_selected", "_selected_action": [str(waiting.pk)]})
    assert InferenceRequest.objects.get(pk=waiting.pk).status == "cancelled"


def test_the_retry_action_resubmits_finished_requests(admin_client: Client) -> None:
    done = completed("again please")
    admin_client.post(URL, {"action": "retry_selected", "_selected_action": [str(done.pk)]})
    retried = InferenceRequest.objects.exclude(pk=done.pk).get()
    assert (retried.prompt, retried.status, retried.session_id) == (
        "again please",
        "pending",
        done.session_id,
    )


def test_a_v1_request_shows_and_retries_with_the_clients_messages(admin_client: Client) -> None:
    conversation = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]
    done = completed("hi")
    InferenceRequest.objects.filter(pk=done.pk).update(conversation=conversation)
    page = admin_client.get(f"{URL}{done.pk}/change/").content.decode()
    assert "messages (/v1)" in page and "Be terse." in page
    admin_client.post(URL, {"action": "retry_selected", "_selected_action": [str(done.pk)]})
    assert InferenceRequest.objects.exclude(pk=done.pk).get().conversation == conversation


KEYS_URL = "/admin/inference/apikey/"


def test_the_admin_creates_a_key_and_shows_its_secret_once(admin_client: Client) -> None:
    from inference.models import ApiKey

    response = admin_client.post(
        f"{KEYS_URL}add/",
        {
            "name": "partner",
            "requests_per_minute": "100",
            "fair_share_weight": "1",
            # The (read-only) budget periods inline's empty formset, as the page sends it.
            "budget_ledgers-TOTAL_FORMS": "0",
            "budget_ledgers-INITIAL_FORMS": "0",
        },
        follow=True,
    )
    key = ApiKey.objects.get(name="partner")
    shown = [str(m) for m in response.context["messages"]]
    secret = next(word.rstrip(".") for m in shown for word in m.split() if "." in word[:9])
    assert secret.startswith(key.prefix + ".") and key.is_valid(secret)
    assert secret not in key.hashed_key and key.requests_per_minute == 100
    listing = admin_client.get(KEYS_URL).content.decode()
    assert key.prefix in listing and secret not in listing


def test_the_admin_revokes_keys_in_bulk(admin_client: Client) -> None:
    from inference.models import ApiKey

    keys = [ApiKey.objects.create_key(name=f"k{i}")[0] for i in range(2)]
    admin_client.post(
        KEYS_URL, {"action": "revoke_selected", "_selected_action": [k.pk for k in keys]}
    )
    assert ApiKey.objects.filter(revoked=True).count() == 2


def test_a_hit_links_to_its_source_and_the_list_filters_by_cache_status(
    admin_client: Client,
) -> None:
    source = completed()
    hit = submit("a b")
    InferenceRequest.objects.filter(pk=hit.pk).update(
        status="completed", cache_status="hit", cache_source=source, cache_key="c" * 64
    )
    page = admin_client.get(f"{URL}{hit.pk}/change/").content.decode()
    assert f'href="{URL}{source.pk}/change/"' in page and "c" * 64 in page
    listed = admin_client.get(URL, {"cache_status__exact": "hit"}).content.decode()
    assert str(hit.pk) in listed and str(source.pk) not in listed


def test_the_key_list_shows_usage_and_the_request_list_filters_by_key(
    admin_client: Client,
) -> None:
    from decimal import Decimal

    from inference.models import ApiKey

    key, _ = ApiKey.objects.create_key(name="metered")
    other, _ = ApiKey.objects.create_key(name="other")
    for tokens, cost in ((100, "0.5"), (20, "0.25")):
        InferenceRequest.objects.create(
            api_key=key,
            prompt="p",
            session_id="s",
            backend="echo",
            status="completed",
            prompt_tokens=tokens,
            completion_tokens=tokens,
            cost=Decimal(cost),
        )
    InferenceRequest.objects.create(api_key=other, prompt="q", session_id="s", backend="echo")
    keys_page = admin_client.get(KEYS_URL).content.decode()
    row = keys_page[keys_page.index(key.prefix) :][:2000]
    assert "240" in row and "0.75" in row  # tokens (24 h and 30 d), cost (30 d)
    listed = admin_client.get(URL, {"key": key.prefix}).content.decode()
    assert listed.count('class="field-tokens"') == 2
    assert '<td class="field-tokens">200</td>' in listed


def test_a_keys_budget_shows_in_the_list_and_its_periods_on_its_page(
    admin_client: Client,
) -> None:
    from datetime import UTC, datetime

    from inference.models import ApiKey, BudgetLedger

    key, _ = ApiKey.objects.create_key(name="budgeted", budget_tokens=5000, budget_period="day")
    ApiKey.objects.create_key(name="unbudgeted")
    period = datetime(2026, 11, 30, tzinfo=UTC)
    BudgetLedger.objects.create(api_key=key, period_start=period, tokens=1234, cost=0)
    keys_page = admin_client.get(KEYS_URL).content.decode()
    assert '<td class="field-budget">5000 tokens / day</td>' in keys_page
    assert '<td class="field-budget">-</td>' in keys_page
    page = admin_client.get(f"{KEYS_URL}{key.pk}/change/").content.decode()
    assert "budget periods (finished requests, folded)" in page.lower()
    assert "1234" in page and "Nov. 30, 2026" in page


def test_staff_who_may_only_view_requests_cannot_cancel_or_rerun_them() -> None:
    from django.contrib.auth.models import Permission, User

    viewer = User.objects.create(username="viewer", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_inferencerequest"))
    client = Client()
    client.force_login(viewer)
    waiting = submit()
    assert client.get(URL).status_code == 200  # the list is theirs to see
    client.post(URL, {"action": "cancel_selected", "_selected_action": [str(waiting.pk)]})
    client.post(URL, {"action": "retry_selected", "_selected_action": [str(waiting.pk)]})
    assert list(InferenceRequest.objects.values_list("status", flat=True)) == ["pending"]
