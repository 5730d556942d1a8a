"""The retrieval checks again, on PostgreSQL full-text search (GIN index, ts_rank)."""

from __future__ import annotations

import pytest
from django.db import connection

from tests import retrieval_cases

pytestmark = [pytest.mark.services, pytest.mark.django_db]


def test_runs_on_postgresql_with_the_gin_index() -> None:
    assert connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'inference_documentchunk_fts'"
        )
        assert "gin" in cursor.fetchone()[0].lower()


def test_the_expected_document_ranks_first() -> None:
    retrieval_cases.check_the_expected_document_ranks_first()


def test_an_unrelated_query_retrieves_nothing() -> None:
    retrieval_cases.check_an_unrelated_query_retrieves_nothing()


def test_the_document_filter_restricts_the_search() -> None:
    retrieval_cases.check_the_document_filter_restricts_the_search()
