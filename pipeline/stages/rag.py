from __future__ import annotations

from channels.db import database_sync_to_async
from django.conf import settings

from inference.models import DocumentChunk
from pipeline.context import PipelineContext
from pipeline.retrieval import get_retriever
from pipeline.stages.base import Stage


class RagStage(Stage):
    """Retrieve the top-k document chunks for the prompt (none: a no-op).

    Per request: ``rag: false`` turns it off; ``{"top_k": n, "documents": [ids]}``
    tunes it. The passages (with scores) are stored on the request.
    """

    name = "rag"
    flag = "rag"

    async def run(self, ctx: PipelineContext) -> PipelineContext:
        options = ctx.request.rag
        if options.get("enabled", True) is False or DocumentChunk.objects.known_empty():
            return ctx  # (an empty store: not even a thread hop to find nothing)
        top_k = options.get("top_k", settings.ORCHESTRATOR_RAG_TOP_K)
        search = database_sync_to_async(get_retriever().search)
        passages = await search(ctx.request.prompt, top_k, options.get("documents"))
        ctx.passages = [p.as_dict() for p in passages]
        return ctx
