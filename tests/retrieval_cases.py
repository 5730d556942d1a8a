"""Retrieval checks shared by the SQLite (default) and PostgreSQL (service) suites."""

from __future__ import annotations

from pathlib import Path

from django.core.management import call_command

from inference.models import Document
from pipeline.retrieval import get_retriever

CORPUS = Path(__file__).parent / "fixtures" / "corpus"

QUERIES = [
    ("What is the capital of the Zorblax Archipelago?", "The Zorblax Archipelago"),
    ("How do explosive eruptions and lava flows differ?", "Volcanoes"),
    ("how do I feed a sourdough starter", "bread"),
    ("Can a pawn be promoted when castling?", "chess"),
]


def ingest_corpus() -> None:
    call_command("ingest", str(CORPUS))


def check_the_expected_document_ranks_first() -> None:
    ingest_corpus()
    for query, title in QUERIES:
        passages = get_retriever().search(query, 3)
        assert passages, query
        assert passages[0].title == title, (query, [p.title for p in passages])
        assert passages == sorted(passages, key=lambda p: -p.score)


def check_an_unrelated_query_retrieves_nothing() -> None:
    ingest_corpus()
    assert get_retriever().search("Which football team won the league in 1987?", 3) == []
    assert get_retriever().search("what is it?", 3) == []  # stop words only


def check_the_document_filter_restricts_the_search() -> None:
    ingest_corpus()
    bread = Document.objects.get(title="bread")
    passages = get_retriever().search("capital of Zorblax and sourdough", 3, [bread.pk])
    assert [p.title for p in passages] == ["bread"]
