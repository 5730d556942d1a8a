"""``manage.py ingest PATH...``: add text, Markdown, HTML and PDF files to the
document store."""

from __future__ import annotations

import io
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from pypdf import PdfReader

from inference import services

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text"}
HTML_SUFFIXES = {".html", ".htm"}
PDF_SUFFIX = ".pdf"
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {PDF_SUFFIX}
PROGRESS_EVERY = 100  # files; smaller runs need no progress line


def neutral(text: str) -> str:
    """Django styles everything on stderr as an error; progress is not one."""
    return text


class Skipped(Exception):
    """A file not ingested: ``reason`` is binary, empty, unreadable or unsupported."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def files_under(path: Path) -> list[Path]:
    """A file as itself; a directory's files, recursively (of any type: the
    unsupported ones are counted as skipped)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    raise CommandError(f"{path} does not exist")


def source_of(path: Path, root: Path) -> str:
    """``path`` as ``<root's name>/<path under root>``: the same tree ingested
    from another directory, by an absolute path or after a move keys the same
    documents, so it replaces them."""
    if path == root:
        return root.resolve().name
    return (Path(root.resolve().name) / path.relative_to(root)).as_posix()


def title_of(path: Path, text: str) -> str:
    """A Markdown file's first heading, else the file name."""
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()[:300]
    return path.stem.replace("_", " ").replace("-", " ")[:300]


def read_document(path: Path, walked: bool) -> tuple[str, str]:
    """(title, text) of a file, or Skipped. A file named on the command line is
    read as text whatever its suffix; one found in a directory only if supported."""
    suffix = path.suffix.lower()
    if walked and suffix not in SUFFIXES:
        raise Skipped("unsupported", suffix or "no suffix")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise Skipped("unreadable", error.strerror or str(error)) from None
    if suffix == PDF_SUFFIX:
        title, text = pdf_text(data)
    elif suffix in HTML_SUFFIXES:
        title, text = html_text(decoded(data))
    else:
        title, text = "", decoded(data)
    if not text.strip():
        raise Skipped("empty")
    return (title or title_of(path, text))[:300], text


def decoded(data: bytes) -> str:
    """UTF-8 text; a NUL byte or invalid UTF-8 means the file is not text."""
    if b"\x00" in data:
        raise Skipped("binary", "contains NUL bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Skipped("binary", "not UTF-8 text") from None


def pdf_text(data: bytes) -> tuple[str, str]:
    """(title from its metadata or "", its pages' text)."""
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or ""
    except Exception as error:  # a malformed PDF fails pypdf in many ways
        raise Skipped("unreadable", f"not a readable PDF ({error})") from None
    return str(title), "\n\n".join(pages)


def html_text(markup: str) -> tuple[str, str]:
    """(its <title>, its visible text with block elements as paragraphs)."""
    parser = VisibleText()
    parser.feed(markup)
    parser.close()
    return parser.title.strip(), parser.text()


class VisibleText(HTMLParser):
    """What a browser shows of a page: no script or style, blocks as paragraphs."""

    HIDDEN = {"script", "style", "template"}
    BLOCKS = {"p", "div", "br", "li", "tr", "section", "article", "pre", "blockquote"}
    BLOCKS |= {"h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "header", "footer"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self._parts: list[str] = []
        self._open: list[str] = []  # hidden elements (and <title>) we are inside

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self.HIDDEN or tag == "title":
            self._open.append(tag)
        elif tag in self.BLOCKS:
            self._parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag) :]
        elif tag in self.BLOCKS:
            self._parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1] == "title":
            self.title += data
        elif not self._open:
            self._parts.append(data)

    def text(self) -> str:
        paragraphs = "".join(self._parts).split("\n\n")
        return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


class Tally:
    """What one run did, for the summary."""

    def __init__(self) -> None:
        self.files = 0
        self.chunks = 0
        self.skipped: Counter[str] = Counter()

    def summary(self) -> str:
        done = f"ingested {self.files} file(s) as {self.chunks} chunk(s)"
        if not self.skipped:
            return done
        why = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
        return f"{done}; skipped {self.skipped.total()} ({why})"


class Command(BaseCommand):
    help = (
        "Ingest text, Markdown, HTML and PDF files (directories recursively) into the "
        "document store; binary and empty files are skipped. A document's source is "
        "its path from the argument's own name (docs/guide/a.md for `ingest docs`), so "
        "ingesting the same tree again, from anywhere, replaces its documents."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("paths", nargs="+", type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        files = [(root, path) for root in options["paths"] for path in files_under(root)]
        tally = Tally()
        for done, (root, path) in enumerate(files, 1):
            self._ingest(root, path, tally)
            if len(files) > PROGRESS_EVERY and done % PROGRESS_EVERY == 0:
                self.stderr.write(f"{done}/{len(files)} files", style_func=neutral)
        self.stdout.write(tally.summary())

    def _ingest(self, root: Path, path: Path, tally: Tally) -> None:
        try:
            title, text = read_document(path, walked=root.is_dir())
        except Skipped as skipped:
            tally.skipped[skipped.reason] += 1
            if skipped.reason != "unsupported":  # a tree may hold many: counted only
                self.stderr.write(f"skipped {path} ({skipped})", style_func=self.style.WARNING)
            return
        document = services.ingest_document(title, text, source=source_of(path, root))
        chunks = document.chunks.count()
        tally.files += 1
        tally.chunks += chunks
        self.stdout.write(f"{path}: {chunks} chunk(s) as {document.title!r}")
