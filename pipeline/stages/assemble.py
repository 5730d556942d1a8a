from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from inference.models import InferenceRequest, Status
from pipeline.backends import get_backend
from pipeline.context import PipelineContext, RequestSnapshot
from pipeline.stages.base import Stage

Message = dict[str, str]


def sources_text(passages: list[dict[str, Any]]) -> str:
    """The numbered sources the model may cite, in the RAG template."""
    sources = "\n\n".join(
        f"[{i}] {p['title']}: {p['text']}" for i, p in enumerate(passages, start=1)
    )
    return settings.ORCHESTRATOR_RAG_TEMPLATE.format(sources=sources)


def system_message(passages: list[dict[str, Any]], system: str = "") -> Message:
    """The system prompt (the request's own, else the configured one), plus the
    numbered sources the model may cite."""
    content = system or settings.ORCHESTRATOR_SYSTEM_PROMPT
    if passages:
        content += "\n\n" + sources_text(passages)
    return {"role": "system", "content": content}


def with_sources(conversation: list[Message], passages: list[dict[str, Any]]) -> list[Message]:
    """A client's own conversation (``/v1``), as sent: no system prompt, no
    session history; retrieved sources, if any, go first as a system message."""
    if not passages:
        return list(conversation)
    return [{"role": "system", "content": sources_text(passages)}, *conversation]


def starts_session(request: RequestSnapshot) -> bool:
    """A session the server named after this request (no ``session_id`` was
    given) begins with it: there is nothing earlier to look up."""
    return request.session_id == str(request.id)


def earlier_turns(request: RequestSnapshot) -> list[Message]:
    """The session's completed turns before this request, oldest first."""
    if request.created_at is None or starts_session(request):
        return []
    rows = (
        # Only the same key's turns: two clients may pick the same session id.
        InferenceRequest.objects.owned_by(request.api_key_id, request.owner_id)
        .in_session(request.session_id)
        .filter(status=Status.COMPLETED, created_at__lt=request.created_at)
        .exclude(pk=request.id)
        .order_by("-created_at")
        .values_list("prompt", "result")[: settings.ORCHESTRATOR_SESSION_MAX_TURNS]
    )
    turns: list[Message] = []
    for prompt, result in reversed(rows):
        turns += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": result or ""},
        ]
    return turns


def fit_to_budget(
    system: Message, history: list[Message], prompt: Message, budget: int, count: Any
) -> list[Message]:
    """Drop the oldest turns (user + assistant pairs) until everything fits.

    The system prompt and the new prompt are always kept.
    """
    used = count(system["content"]) + count(prompt["content"])
    costs = [count(m["content"]) for m in history]
    start = 0
    while start < len(history) and used + sum(costs[start:]) > budget:
        start += 2
    return [system, *history[start:], prompt]


class AssembleStage(Stage):
    """System prompt and cited passages, then the session's history, then the
    prompt; or a ``/v1`` client's own messages, with the passages ahead of them.

    The result is stored on the request, so anyone can see what the model got.
    """

    name = "assemble"

    async def run(self, ctx: PipelineContext) -> PipelineContext:
        if ctx.request.conversation:
            ctx.messages = with_sources(ctx.request.conversation, ctx.passages)
            return ctx
        history = await database_sync_to_async(earlier_turns)(ctx.request)
        budget = settings.ORCHESTRATOR_CONTEXT_TOKENS - ctx.request.params.max_tokens
        ctx.messages = fit_to_budget(
            system_message(ctx.passages, ctx.request.system),
            history,
            {"role": "user", "content": ctx.request.prompt},
            budget,
            get_backend(ctx.request.backend).count_tokens,
        )
        return ctx
