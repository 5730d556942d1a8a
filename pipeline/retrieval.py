"""Lexical retrieval over the document store, behind one interface.

PostgreSQL: full-text search (``to_tsvector('english', text)`` with a GIN index,
ranked by ``ts_rank``). SQLite: an FTS5 index (porter stemming) ranked by BM25.
Both OR the query's content words together (a question rarely contains every
word of the answer) and drop English stop words, so an unrelated prompt
matches nothing. Scores are each engine's own, higher is better.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.db import connection

from inference.models import DocumentChunk

STOP_WORDS = frozenset(
    """a about above after again all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is
    it its itself just me more most my myself no nor not now of off on once only or other our
    ours out over own same she should so some such than that the their theirs them then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself tell know please give""".split()  # noqa: SIM905
)
_WORD = re.compile(r"[a-z0-9]+")


def query_terms(text: str, limit: int = 32) -> list[str]:
    """Distinct content words of a prompt, lower-cased, safe for both query syntaxes."""
    terms = [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS and len(w) > 1]
    return list(dict.fromkeys(terms))[:limit]


@dataclass(frozen=True)
class Passage:
    chunk_id: int
    document_id: int
    title: str
    source: str
    text: str
    score: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Retriever:
    """Top-k chunks for a query; ``documents`` restricts the search to those ids."""

    def search(self, query: str, top_k: int, documents: list[int] | None = None) -> list[Passage]:
        terms = query_terms(query)
        if not terms or top_k < 1 or DocumentChunk.objects.store_is_empty():
            return []
        scored = self.scored_chunk_ids(terms, top_k, documents or [])
        minimum = settings.ORCHESTRATOR_RAG_MIN_SCORE
        scores = {chunk_id: score for chunk_id, score in scored if score > minimum}
        chunks = DocumentChunk.objects.select_related("document").in_bulk(list(scores))
        return [
            Passage(c.pk, c.document_id, c.document.title, c.document.source, c.text, round(s, 6))
            for chunk_id, s in sorted(scores.items(), key=lambda kv: -kv[1])
            if (c := chunks.get(chunk_id)) is not None
        ]

    def scored_chunk_ids(
        self, terms: list[str], top_k: int, documents: list[int]
    ) -> list[tuple[int, float]]:
        raise NotImplementedError


class PostgresRetriever(Retriever):
    def scored_chunk_ids(
        self, terms: list[str], top_k: int, documents: list[int]
    ) -> list[tuple[int, float]]:
        sql = """
            SELECT c.id, ts_rank(to_tsvector('english', c.text), q) AS score
            FROM inference_documentchunk c, to_tsquery('english', %s) q
            WHERE to_tsvector('english', c.text) @@ q
              AND (cardinality(%s::bigint[]) = 0 OR c.document_id = ANY(%s::bigint[]))
            ORDER BY score DESC, c.id LIMIT %s
        """
        with connection.cursor() as cursor:
            cursor.execute(sql, [" | ".join(terms), documents, documents, top_k])
            return [(row[0], float(row[1])) for row in cursor.fetchall()]


SQLITE_SEARCH = """
    SELECT f.rowid, -bm25(inference_documentchunk_fts) AS score
    FROM inference_documentchunk_fts f
    JOIN inference_documentchunk c ON c.id = f.rowid
    WHERE inference_documentchunk_fts MATCH %s {only}
    ORDER BY score DESC, f.rowid LIMIT %s
"""


class SqliteRetriever(Retriever):
    def scored_chunk_ids(
        self, terms: list[str], top_k: int, documents: list[int]
    ) -> list[tuple[int, float]]:
        match = " OR ".join(f'"{term}"' for term in terms)
        only = f"AND c.document_id IN ({','.join('%s' for _ in documents)})" if documents else ""
        # Only "%s" placeholders are interpolated; every value is a bound parameter.
        sql = SQLITE_SEARCH.format(only=only)  # nosec B608
        with connection.cursor() as cursor:
            cursor.execute(sql, [match, *documents, top_k])
            return [(row[0], float(row[1])) for row in cursor.fetchall()]


def get_retriever() -> Retriever:
    return PostgresRetriever() if connection.vendor == "postgresql" else SqliteRetriever()
