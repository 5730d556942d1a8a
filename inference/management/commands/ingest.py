"""``manage.py ingest PATH...``: add text and Markdown files to the document store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inference import services

SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text"}


def files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    raise CommandError(f"{path} does not exist")


def title_of(path: Path, text: str) -> str:
    """A Markdown file's first heading, else the file name."""
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()[:300]
    return path.stem.replace("_", " ").replace("-", " ")[:300]


class Command(BaseCommand):
    help = (
        "Ingest text/Markdown files (directories recursively) into the document store. "
        "A file ingested again replaces its earlier version."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("paths", nargs="+", type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        for path in (f for p in options["paths"] for f in files_under(p)):
            text = path.read_text(encoding="utf-8", errors="replace")
            if not text.strip():
                self.stderr.write(f"skipped {path} (empty)")
                continue
            document = services.ingest_document(
                title_of(path, text), text, source=str(path.resolve())
            )
            self.stdout.write(f"{path}: {document.chunks.count()} chunk(s) as {document.title!r}")
