from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db import transaction
from django.db.models import F, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Substr
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.text import Truncator
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey as LibraryAPIKey

from inference import events, services
from inference.admission import Refusal
from inference.auth import Caller
from inference.budgets import budget_of
from inference.models import (
    ApiKey,
    BudgetLedger,
    Document,
    DocumentChunk,
    FeatureFlag,
    InferenceRequest,
    InferenceRequestQuerySet,
    StreamChunk,
    Transport,
    backend_names,
)

STAGES = ("rag", "assemble", "cache", "inference", "post", "stream")


def json_display(value: Any) -> str:
    """A JSON field as ASCII JSON: a stored lone surrogate cannot break the page."""
    return format_html('<pre style="white-space:pre-wrap">{}</pre>', json.dumps(value, indent=2))


def messages_html(messages: list[dict[str, str]]) -> str:
    rows = ((m["role"], m["content"]) for m in messages)
    html = format_html_join(
        "", '<div><code>{}</code><pre style="white-space:pre-wrap">{}</pre></div>', rows
    )
    return html or "—"


def millis(value: datetime | None) -> str:
    """A time to the millisecond, with its zone: stage timings are milliseconds,
    and Django's default format stops at the minute."""
    if value is None:
        return "—"
    local = timezone.localtime(value)
    return f"{local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d} {local:%Z}"


def millis_field(name: str) -> Callable[[Any, Any], str]:
    """A read-only admin column showing the model's time field ``name`` by ``millis``."""

    @admin.display(description=name.replace("_", " "), ordering=name)
    def show(model_admin: Any, obj: Any) -> str:
        return millis(getattr(obj, name))

    return show


def preview(text: str | None, width: int = 60) -> str:
    """Text on one line (runs of whitespace become one space), cut at ``width``."""
    return Truncator(" ".join((text or "").split())).chars(width) or "—"


SHORT_ID = re.compile(r"[0-9a-f]{8,31}")


def id_prefix_range(term: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The ids starting with ``term`` (a short id: 8 or more hex digits) as the
    range [prefix-000…, prefix-fff…]: a range on the primary key uses its index,
    where a LIKE on a PostgreSQL uuid would need a cast and scan the table."""
    digits = term.replace("-", "").lower()
    if not SHORT_ID.fullmatch(digits):
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def request_link(request_id: uuid.UUID | None) -> str:
    if request_id is None:
        return "—"
    url = reverse("admin:inference_inferencerequest_change", args=[request_id])
    return format_html('<a href="{}">{}</a>', url, request_id)


class BackendFilter(admin.SimpleListFilter):
    title = "backend"
    parameter_name = "backend"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in backend_names()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(backend=self.value()) if self.value() else queryset


class KeyFilter(admin.SimpleListFilter):
    """The requests of one API key (the keys table lists them: no scan of requests)."""

    title = "API key"
    parameter_name = "key"
    LISTED = 50

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        keys = ApiKey.objects.order_by("-last_used_at", "name").values_list("prefix", "name")
        return [(prefix, f"{name} ({prefix})") for prefix, name in keys[: self.LISTED]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(api_key_id=self.value()) if self.value() else queryset


class TransportFilter(admin.SimpleListFilter):
    title = "transport"
    parameter_name = "transport"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(Transport.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(transport=self.value()) if self.value() else queryset


# What the request list never shows: loading them for 50 rows could be megabytes
# (prompts, answers, message lists); the previews read a prefix in SQL instead.
LIST_DEFERRED = (
    "prompt",
    "result",
    "conversation",
    "metadata",
    "params",
    "passages",
    "messages",
    "error_detail",
)
PREVIEW_CHARS = 200  # read, before whitespace is collapsed and the preview cut


class RequestChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
        return (
            super()
            .get_queryset(request, exclude_parameters)
            .defer(*LIST_DEFERRED)
            .annotate(
                prompt_head=Substr("prompt", 1, PREVIEW_CHARS),
                result_head=Substr("result", 1, PREVIEW_CHARS),
            )
        )


TIME_FIELDS = (
    "created_at",
    "fair_at",
    "promoted_at",
    "started_at",
    "finished_at",
    "lease_expires_at",
    "deadline_at",
    "cache_expires_at",
    "detached_at",
)


@admin.register(InferenceRequest)
class InferenceRequestAdmin(admin.ModelAdmin):
    """Requests are records: read-only (no save buttons), with actions to cancel
    or re-run them."""

    list_display = (
        "id",
        "status",
        "prompt_preview",
        "result_preview",
        "backend",
        "priority",
        "api_key",
        "tokens",
        "created_at_ms",
        "duration_ms",
        "attempt",
    )
    # No filter here may scan the table (no DISTINCT over a million rows, no date
    # hierarchy): backend and transport list known values instead.
    list_filter = (
        "status",
        "cache_status",
        KeyFilter,
        BackendFilter,
        TransportFilter,
        ("created_at", admin.DateFieldListFilter),
    )
    search_fields = ("=id", "=session_id", "prompt")
    ordering = ("-created_at",)
    list_select_related = ("api_key",)  # a nullable key: a bare select_related skips it
    list_per_page = 50
    show_full_result_count = False  # no COUNT(*) over millions of rows per page
    actions = ["cancel_selected", "retry_selected"]
    readonly_fields = (
        "id",
        "session_id",
        "status",
        "prompt",
        "metadata_display",
        "priority",
        "transport",
        "backend",
        "backend_used",
        "params_display",
        "result",
        "error",
        "error_code",
        "error_detail",
        "config_hash",
        "attempt",
        "max_attempts",
        "lease_owner",
        "lease_expires_at_ms",
        "deadline_at_ms",
        "last_seq",
        "created_at_ms",
        "fair_at_ms",
        "promoted_at_ms",
        "started_at_ms",
        "finished_at_ms",
        "timeline",
        "streamed_text",
        "passages_display",
        "conversation_display",
        "messages_display",
        "prompt_tokens",
        "completion_tokens",
        "finish_reason",
        "cache_status",
        "cache_source_link",
        "coalesced_into_link",
        "cache_key",
        "cache_expires_at_ms",
        "cache_control",
        "detached_at_ms",
        "api_key",
        "idempotency_key",
        "client_ip",
    )
    exclude = (
        "timings",
        "passages",
        "messages",
        "conversation",
        "metadata",
        "params",
        "cache_source",
        "coalesced_into",
        "dedup_key",
        *TIME_FIELDS,  # shown to the millisecond by the *_ms fields above
    )

    created_at_ms = millis_field("created_at")
    fair_at_ms = millis_field("fair_at")
    promoted_at_ms = millis_field("promoted_at")
    started_at_ms = millis_field("started_at")
    finished_at_ms = millis_field("finished_at")
    lease_expires_at_ms = millis_field("lease_expires_at")
    deadline_at_ms = millis_field("deadline_at")
    cache_expires_at_ms = millis_field("cache_expires_at")
    detached_at_ms = millis_field("detached_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Nobody edits a request: its page is a view (no save buttons, a POST to
        it is refused). The list's actions (cancel, re-run) change requests: they
        take the change permission, as the API's cancel does."""
        return obj is None and super().has_change_permission(request)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        """The curated fields first; any other model field (bookkeeping) after them."""
        rest = super().get_fields(request, obj)
        return [*self.readonly_fields, *(f for f in rest if f not in self.readonly_fields)]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return RequestChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """A request id, or the short id the chat page and the dashboard show,
        finds its request by primary key alone: OR-ing it with the prompt's ILIKE
        would scan the whole table (~1 s at a million rows)."""
        term = search_term.strip()
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
            pass
        # A prompt may hold a hex-looking word ("12345678"): no such id, search text.
        if (ids := id_prefix_range(term)) and (found := queryset.filter(pk__range=ids)).exists():
            return found, False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="prompt")
    def prompt_preview(self, obj: Any) -> str:
        return preview(obj.prompt_head)

    @admin.display(description="result")
    def result_preview(self, obj: Any) -> str:
        return preview(obj.result_head)

    @admin.display(description="streamed text")
    def streamed_text(self, obj: InferenceRequest) -> str:
        """The tokens as one block, whitespace kept (a row per chunk made a
        190-token answer 14,000 pixels tall); the chunks are a link away."""
        texts = list(obj.chunks.order_by("seq").values_list("text", flat=True))
        if not texts:
            return "—"
        chunks = reverse("admin:inference_streamchunk_changelist")
        return format_html(
            '<pre style="white-space:pre-wrap;font-family:monospace;margin:0">{}</pre>'
            '<a href="{}?{}">{} chunks (attempt {})</a>',
            "".join(texts),
            chunks,
            urlencode({"request__id__exact": str(obj.pk)}),
            len(texts),
            obj.attempt,
        )

    @admin.display(description="metadata")
    def metadata_display(self, obj: InferenceRequest) -> str:
        return json_display(obj.metadata)

    @admin.display(description="params")
    def params_display(self, obj: InferenceRequest) -> str:
        return json_display(obj.params)

    @admin.display(description="retrieved passages")
    def passages_display(self, obj: InferenceRequest) -> str:
        rows = ((p["score"], p["title"], p["text"][:300]) for p in obj.passages)
        html = format_html_join("", "<div><b>{:.3f}</b> {}: {}</div>", rows)
        return html or "—"

    @admin.display(description="messages sent to the model")
    def messages_display(self, obj: InferenceRequest) -> str:
        return messages_html(obj.messages)

    @admin.display(description="the client's messages (/v1)")
    def conversation_display(self, obj: InferenceRequest) -> str:
        return messages_html(obj.conversation)

    @admin.display(description="tokens")
    def tokens(self, obj: InferenceRequest) -> int:
        return obj.prompt_tokens + obj.completion_tokens

    @admin.display(description="answer came from")
    def cache_source_link(self, obj: InferenceRequest) -> str:
        return request_link(obj.cache_source_id)

    @admin.display(description="follows (dedup) / handed over to")
    def coalesced_into_link(self, obj: InferenceRequest) -> str:
        return request_link(obj.coalesced_into_id)

    @admin.display(description="duration (ms)")
    def duration_ms(self, obj: InferenceRequest) -> str:
        """Submitted to finished, as the client waited (queue included)."""
        if obj.finished_at is None:
            return "—"
        return str(round((obj.finished_at - obj.created_at).total_seconds() * 1000))

    @admin.display(description="stage timings")
    def timeline(self, obj: InferenceRequest) -> str:
        """Each stage's share of the attempt as a bar with its milliseconds."""
        timings = obj.timings or {}
        skipped = format_html_join(
            "",
            "<div><code>{}</code> skipped: its feature flag was off</div>",
            ((stage,) for stage in obj.skipped_stages),
        )
        total = sum(timings.get(stage, 0.0) for stage in STAGES) or 1.0
        rows = [
            (stage, f"{timings[stage] * 1000:.1f}", max(1, round(300 * timings[stage] / total)))
            for stage in STAGES
            if stage in timings
        ]
        if not rows:
            return skipped or "—"
        bars = format_html_join(
            "",
            '<div><code style="display:inline-block;width:6em">{}</code>'
            '<span style="display:inline-block;background:#79aec8;height:.8em;width:{}px">'
            "</span> {} ms</div>",
            ((stage, width, ms) for stage, ms, width in rows),
        )
        notes = (
            ("queued for {} ms", "queue_wait", 1000),
            ("first token after {} ms", "first_token", 1000),
            ("{} tokens/s", "tokens_per_second", 1),
        )
        extra = format_html_join(
            "",
            "<div>{}</div>",
            ((t.format(f"{timings[k] * scale:.1f}"),) for t, k, scale in notes if k in timings),
        )
        return format_html("{}{}{}", skipped, bars, extra)

    @admin.action(description="Cancel selected requests", permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: InferenceRequestQuerySet) -> None:
        cancelled = sum(
            services.cancel_request(row.pk).status == "cancelled" for row in queryset.active()
        )
        self.message_user(request, f"Cancelled {cancelled} request(s).", messages.SUCCESS)

    @admin.action(
        description="Retry selected finished requests (as new requests)", permissions=["change"]
    )
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[InferenceRequest]) -> None:
        try:
            retried = [services.retry_request(row.pk) for row in queryset]
        except Refusal as refusal:  # the owner's in-flight limit, a full queue
            self.message_user(request, f"Not resubmitted: {refusal.message}", messages.ERROR)
            return
        count = sum(row is not None for row in retried)
        self.message_user(request, f"Resubmitted {count} request(s).", messages.SUCCESS)


@admin.register(StreamChunk)
class StreamChunkAdmin(admin.ModelAdmin):
    """A request's chunks, one row each, linked from its page (not on the index:
    the table is every token ever streamed)."""

    list_display = ("seq", "attempt", "text_display", "created_at_ms")
    list_display_links = None
    ordering = ("request_id", "seq")  # the (request, seq) unique index
    list_per_page = 500
    show_full_result_count = False
    created_at_ms = millis_field("created_at")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("inference.view_inferencerequest")  # its request's

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="text")
    def text_display(self, obj: StreamChunk) -> str:
        return format_html('<code style="white-space:pre">{}</code>', obj.text)


class DocumentChunkInline(admin.TabularInline):
    model = DocumentChunk
    fields = ("position", "text")
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0


@admin.register(FeatureFlag)
class FeatureFlagAdmin(admin.ModelAdmin):
    """Flip a feature flag on a running fleet: every process sees it within
    ``features.refresh_seconds``, processes with an engine at once."""

    list_display = ("name", "enabled", "percent", "updated_at", "updated_by")
    list_editable = ("enabled", "percent")
    readonly_fields = ("updated_at", "updated_by")

    def save_model(self, request: HttpRequest, obj: FeatureFlag, form: Any, change: bool) -> None:
        obj.updated_by = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)
        announce_after_commit()

    def delete_model(self, request: HttpRequest, obj: FeatureFlag) -> None:
        super().delete_model(request, obj)
        announce_after_commit()


def announce_after_commit() -> None:
    transaction.on_commit(lambda: async_to_sync(events.announce_flags_changed)())


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ("title", "source", "created_at")
    search_fields = ("title", "source")
    inlines = [DocumentChunkInline]
    readonly_fields = ("created_at",)

    def save_model(self, request: HttpRequest, obj: Document, form: Any, change: bool) -> None:
        # Re-chunk through the service so the index always matches the text.
        saved = services.ingest_document(obj.title, obj.text, source=obj.source)
        obj.pk = saved.pk


# The library's own (unused) model: ours adds owner, last use and per-key limits.
admin.site.unregister(LibraryAPIKey)


def key_usage(since: Any, amount: Any) -> Subquery:
    """The sum of ``amount`` over the outer key's requests created since ``since``."""
    rows = (
        InferenceRequest.objects.filter(api_key=OuterRef("prefix"), created_at__gte=since)
        .values("api_key")
        .annotate(total=Sum(amount))
        .values("total")
    )
    return Subquery(rows)


class BudgetLedgerInline(admin.TabularInline):
    """A key's budget periods: what its finished requests consumed (folded in a
    lease after they end; requests still running count on their own rows)."""

    model = BudgetLedger
    fields = ("period_start", "tokens", "cost")
    readonly_fields = fields
    ordering = ("-period_start",)
    extra = 0
    max_num = 0  # read-only: nothing to add
    can_delete = False
    verbose_name_plural = "budget periods (finished requests, folded)"


@admin.register(ApiKey)
class ApiKeyAdmin(APIKeyModelAdmin):
    """Create a key (its secret is shown once, in a message) and revoke it."""

    inlines = [BudgetLedgerInline]

    # The library types these as fixed-length tuples; ours are longer.
    list_display = (  # type: ignore[assignment]
        "prefix",
        "name",
        "owner",
        "created",
        "last_used_at",
        "expiry_date",
        "_has_expired",
        "revoked",
        "tokens_24h",
        "tokens_30d",
        "cost_30d",
        "budget",
    )
    list_filter = ("revoked", "created")  # type: ignore[assignment]
    search_fields = ("=prefix", "name", "owner__username")  # type: ignore[assignment]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        """Each listed key's usage, one subquery per column on the page's rows only
        (by the key's requests created in the window: the (key, created) index)."""
        now = timezone.now()
        day, month = now - timedelta(days=1), now - timedelta(days=30)
        return (
            super()
            .get_queryset(request)
            .annotate(
                tokens_24h_sum=key_usage(day, F("prompt_tokens") + F("completion_tokens")),
                tokens_30d_sum=key_usage(month, F("prompt_tokens") + F("completion_tokens")),
                cost_30d_sum=key_usage(month, F("cost")),
            )
        )

    @admin.display(description="tokens, 24 h")
    def tokens_24h(self, obj: Any) -> int:
        return obj.tokens_24h_sum or 0

    @admin.display(description="tokens, 30 d")
    def tokens_30d(self, obj: Any) -> int:
        return obj.tokens_30d_sum or 0

    @admin.display(description="cost, 30 d")
    def cost_30d(self, obj: Any) -> Any:
        return obj.cost_30d_sum or 0

    @admin.display(description="budget")
    def budget(self, obj: ApiKey) -> str:
        budget = budget_of(Caller(key=obj))
        if budget is None:
            return "-"
        limits = [f"{budget.tokens} tokens"] if budget.tokens else []
        limits += [f"{budget.cost} cost"] if budget.cost else []
        return f"{' + '.join(limits)} / {budget.period}"

    raw_id_fields = ("owner",)
    actions = ["revoke_selected"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return (*super().get_readonly_fields(request, obj), "last_used_at")

    @admin.action(description="Revoke selected keys (cannot be undone)")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = queryset.filter(revoked=False).update(revoked=True)
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)
