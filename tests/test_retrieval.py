"""The document store and lexical retrieval (SQLite FTS5 here; PostgreSQL in the
service suite runs the same checks)."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from inference import services
from inference.models import Document, DocumentChunk, chunk_text
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
