"""The document store and lexical retrieval (SQLite FTS5 here; PostgreSQL in the
service suite runs the same checks)."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from inference import services
from inference.models import Document, DocumentChunk, DocumentChunkManager, chunk_text
from pipeline.retrieval import get_retriever, query_terms
from tests import retrieval_cases
from tests.retrieval_cases import CORPUS

pytestmark = pytest.mark.django_db


def test_the_expected_document_ranks_first() -> None:
    retrieval_cases.check_the_expected_document_ranks_first()


def test_an_unrelated_query_retrieves_nothing() -> None:
    retrieval_cases.check_an_unrelated_query_retrieves_nothing()


def test_the_document_filter_restricts_the_search() -> None:
    retrieval_cases.check_the_document_filter_restricts_the_search()


def test_ingest_walks_directories_for_text_and_markdown(capsys) -> None:  # type: ignore[no-untyped-def]
    call_command("ingest", str(CORPUS))
    titles = set(Document.objects.values_list("title", flat=True))
    assert titles == {"Volcanoes", "bread", "The Zorblax Archipelago", "chess"}  # no .json
    assert "volcanoes.md: 1 chunk(s) as 'Volcanoes'" in capsys.readouterr().out


def test_ingesting_a_source_again_replaces_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    note = tmp_path / "note.md"
    note.write_text("# Note\n\nThe secret word is marmalade.")
    call_command("ingest", str(note))
    note.write_text("# Note\n\nThe secret word is tangerine.")
    call_command("ingest", str(note))
    assert Document.objects.count() == 1
    assert [p.text for p in get_retriever().search("secret word", 3)] == [
        "# Note\n\nThe secret word is tangerine."
    ]
    assert get_retriever().search("marmalade", 3) == []


def test_deleting_a_document_removes_it_from_the_index() -> None:
    document = services.ingest_document("t", "Quokkas live on Rottnest Island.", source="s")
    assert get_retriever().search("quokkas", 3)
    document.delete()
    assert not DocumentChunk.objects.exists()
    assert get_retriever().search("quokkas", 3) == []


def test_chunks_pack_paragraphs_up_to_the_limit() -> None:
    text = "\n\n".join(["alpha " * 30, "beta " * 30, "gamma " * 200])
    chunks = chunk_text(text, 400)
    assert all(len(c) <= 400 for c in chunks)
    assert (chunks[0].startswith("alpha") and "beta" in chunks[1]) or "beta" in chunks[0]
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())


def test_query_terms_drop_stop_words_and_punctuation() -> None:
    # Single characters are noise to a lexical index, so "9" goes too.
    assert query_terms("What is the CAPITAL of Zorblax-9?!") == ["capital", "zorblax"]


def test_an_empty_store_is_not_searched_until_it_is_looked_at_again(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No query per request while nothing is ingested: the stage skips even the
    thread hop; a document stored by another process is searched a recheck later,
    one ingested here at once."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    chunks = DocumentChunk.objects
    assert get_retriever().search("rust borrow checker", 3) == []  # looked: empty
    assert chunks.known_empty()
    with CaptureQueriesContext(connection) as queries:
        assert get_retriever().search("rust borrow checker", 3) == []
    assert not queries.captured_queries

    # Another process's ingest (no added() here): seen once the recheck is due.
    document = Document.objects.create(title="Rust", source="other", text="x")
    DocumentChunk.objects.create(document=document, position=0, text="the borrow checker")
    assert get_retriever().search("borrow checker", 3) == []
    monkeypatch.setattr(DocumentChunkManager, "_empty_until", 0.0)  # the recheck is due
    assert [p.document_id for p in get_retriever().search("borrow checker", 3)] == [document.pk]
    assert not chunks.known_empty()


def test_an_ingest_in_this_process_is_searched_at_once() -> None:
    assert get_retriever().search("rust borrow checker", 3) == []
    assert DocumentChunk.objects.known_empty()
    services.ingest_document("Rust", "the borrow checker", "rust")
    assert not DocumentChunk.objects.known_empty()
    assert len(get_retriever().search("borrow checker", 3)) == 1
