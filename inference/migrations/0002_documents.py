"""The document store, and its full-text index for the database in use."""

from __future__ import annotations

import django.utils.timezone
from django.db import migrations, models

SQLITE_FTS = [
    "CREATE VIRTUAL TABLE inference_documentchunk_fts USING fts5("
    "text, content='inference_documentchunk', content_rowid='id', tokenize='porter unicode61')",
    "CREATE TRIGGER inference_documentchunk_fts_insert AFTER INSERT ON inference_documentchunk "
    "BEGIN INSERT INTO inference_documentchunk_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER inference_documentchunk_fts_delete AFTER DELETE ON inference_documentchunk "
    "BEGIN INSERT INTO inference_documentchunk_fts(inference_documentchunk_fts, rowid, text) "
    "VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER inference_documentchunk_fts_update AFTER UPDATE ON inference_documentchunk "
    "BEGIN INSERT INTO inference_documentchunk_fts(inference_documentchunk_fts, rowid, text) "
    "VALUES ('delete', old.id, old.text); "
    "INSERT INTO inference_documentchunk_fts(rowid, text) VALUES (new.id, new.text); END",
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS inference_documentchunk_fts_insert",
    "DROP TRIGGER IF EXISTS inference_documentchunk_fts_delete",
    "DROP TRIGGER IF EXISTS inference_documentchunk_fts_update",
    "DROP TABLE IF EXISTS inference_documentchunk_fts",
]
POSTGRES_FTS = [
    "CREATE INDEX inference_documentchunk_fts ON inference_documentchunk "
    "USING GIN (to_tsvector('english', text))",
]
POSTGRES_DROP = ["DROP INDEX IF EXISTS inference_documentchunk_fts"]


def _run(statements: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def run(apps, schema_editor):  # type: ignore[no-untyped-def]
        for sql in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("inference", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="Document",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("title", models.CharField(max_length=300)),
                ("source", models.CharField(max_length=500, unique=True)),
                ("text", models.TextField()),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={"ordering": ["-created_at"]},
        ),
        migrations.CreateModel(
            name="DocumentChunk",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("position", models.PositiveIntegerField()),
                ("text", models.TextField()),
                ("document", models.ForeignKey(on_delete=models.deletion.CASCADE, related_name="chunks", to="inference.document")),
            ],
            options={
                "ordering": ["document", "position"],
                "constraints": [models.UniqueConstraint(fields=("document", "position"), name="unique_chunk_position")],
            },
        ),
        migrations.AddField(
            model_name="inferencerequest", name="passages", field=models.JSONField(blank=True, default=list)
        ),
        migrations.AddField(
            model_name="inferencerequest", name="messages", field=models.JSONField(blank=True, default=list)
        ),
        migrations.RunPython(
            _run({"sqlite": SQLITE_FTS, "postgresql": POSTGRES_FTS}),
            _run({"sqlite": SQLITE_DROP, "postgresql": POSTGRES_DROP}),
        ),
    ]
