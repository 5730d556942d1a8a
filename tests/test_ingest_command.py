"""manage.py ingest: what it reads (text, HTML, PDF), what it refuses, how it keys
documents, and what it reports."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from django.core.management import call_command
from pypdf import PdfReader

from inference.models import Document
from pipeline.retrieval import get_retriever

pytestmark = pytest.mark.django_db


def ingest(*paths: Path | str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("ingest", *map(str, paths), stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def a_pdf(text: str, title: str) -> bytes:
    """A one-page PDF showing ``text``, written by hand (a text object in
    Helvetica, the cross-reference table's offsets computed)."""
    content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Title (%s) >>" % title.encode(),
    ]
    pdf, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    table = b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    size = len(objects) + 1
    trailer = b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\n" % size
    return (
        pdf
        + b"xref\n0 %d\n0000000000 65535 f \n" % size
        + table
        + trailer
        + b"startxref\n%d\n%%%%EOF\n" % len(pdf)
    )


def test_the_hand_written_pdf_is_valid_for_a_strict_reader() -> None:
    reader = PdfReader(io.BytesIO(a_pdf("Hello", "Greeting")), strict=True)
    assert reader.pages[0].extract_text() == "Hello"


def test_binary_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50)
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    (tmp_path / "random.pdf").write_bytes(os.urandom(4000))
    out, err = ingest(*sorted(tmp_path.iterdir()))
    assert not Document.objects.exists()
    assert f"skipped {tmp_path / 'blob.bin'} (binary: contains NUL bytes)" in err
    assert f"skipped {tmp_path / 'latin1.txt'} (binary: not UTF-8 text)" in err
    assert f"skipped {tmp_path / 'random.pdf'} (unreadable: not a readable PDF" in err
    assert out.strip() == "ingested 0 file(s) as 0 chunk(s); skipped 3 (2 binary, 1 unreadable)"


def test_pdf_text_is_extracted(tmp_path: Path) -> None:
    (tmp_path / "facts.pdf").write_bytes(a_pdf("The capital of Zorblax is Quenthar-9.", "Zorblax"))
    ingest(tmp_path)
    document = Document.objects.get()
    assert (document.title, document.text) == ("Zorblax", "The capital of Zorblax is Quenthar-9.")
    assert [p.document_id for p in get_retriever().search("Zorblax capital", 3)] == [document.pk]


def test_html_keeps_the_visible_text_and_drops_scripts_and_styles(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text(
        "<!doctype html><html><head><title>Bread &amp; butter</title>"
        "<style>p { color: red }</style><script>var secret = 'sourdough';</script></head>"
        "<body><h1>Baking</h1><p>Knead the   dough\nfor ten minutes.</p>"
        "<ul><li>flour</li><li>water &lt;warm&gt;</li></ul></body></html>"
    )
    ingest(page)
    document = Document.objects.get()
    assert document.title == "Bread & butter"
    assert document.text == "Baking\n\nKnead the dough for ten minutes.\n\nflour\n\nwater <warm>"


def test_the_source_is_the_path_from_the_argument_so_a_tree_ingested_again_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "first" / "handbook"
    (tree / "part").mkdir(parents=True)
    (tree / "intro.md").write_text("# Intro\n\nWelcome.")
    (tree / "part" / "one.md").write_text("# One\n\nThe first part.")
    ingest(tree.resolve())
    assert set(Document.objects.values_list("source", flat=True)) == {
        "handbook/intro.md",
        "handbook/part/one.md",
    }
    moved = shutil.copytree(tree, tmp_path / "second" / "handbook")
    monkeypatch.chdir(moved.parent)
    ingest("handbook")
    monkeypatch.chdir(moved)
    ingest(".")
    assert Document.objects.count() == 2
    # A file as the argument is keyed by its own name, from wherever it is named.
    ingest("intro.md")
    ingest(tree / "intro.md")
    assert Document.objects.filter(source="intro.md").count() == 1


def test_large_trees_show_progress_and_every_run_ends_with_a_summary(tmp_path: Path) -> None:
    for number in range(120):
        (tmp_path / f"note{number:03}.txt").write_text(f"Note number {number}.")
    (tmp_path / "blank.md").write_text("  \n")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out, err = ingest(tmp_path)
    assert "100/122 files" in err.splitlines()
    assert "skipped" in err and "photo.png" not in err  # unsupported: counted, not listed
    assert out.splitlines()[-1] == (
        "ingested 120 file(s) as 120 chunk(s); skipped 2 (1 empty, 1 unsupported)"
    )


def test_small_runs_show_no_progress(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("Just one.")
    out, err = ingest(tmp_path)
    assert err == ""
    assert out.splitlines()[-1] == "ingested 1 file(s) as 1 chunk(s)"
