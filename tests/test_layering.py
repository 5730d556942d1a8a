"""The layering the README's Architecture section states, enforced on every
import (module level or inside a function), by reading the source:

    orchestrator_site  the project: settings, URLs, ASGI app, servers, hosting commands
        |         \
    inference (edge)   pipeline (engine)     never import each other's modules...
        |         /
    inference.{models, events, metrics, logs, flags, pricing}   ...only this shared domain

and beside them: ``harness`` drives processes and imports no application code;
``bench`` and ``scripts`` may use anything but ``tests``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = {
    "inference.models",
    "inference.events",
    "inference.metrics",
    "inference.logs",
    "inference.flags",
    "inference.pricing",
}
OURS = ("inference", "pipeline", "orchestrator_site", "harness", "tests", "bench", "scripts")


def modules(package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / package).rglob("*.py")):
        if "migrations" not in path.parts:
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            yield dotted.removesuffix(".__init__"), path


def imports(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from inference import events`` imports inference.events.
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return {name for name in found if name.split(".")[0] in OURS}


def is_domain(name: str) -> bool:
    return any(name == module or name.startswith(f"{module}.") for module in DOMAIN)


def violations(package: str, allowed) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        f"{module} imports {name}"
        for module, path in modules(package)
        for name in sorted(imports(path))
        if not allowed(module, name)
    ]


def test_the_domain_imports_only_itself() -> None:
    def allowed(module: str, name: str) -> bool:
        return not is_domain(module) or name == "inference" or is_domain(name)

    assert violations("inference", allowed) == []


def test_the_api_edge_never_imports_the_engine_or_the_project() -> None:
    def allowed(module: str, name: str) -> bool:
        return name.split(".")[0] == "inference"

    assert violations("inference", allowed) == []


def test_the_engine_uses_only_the_domain_of_inference() -> None:
    def allowed(module: str, name: str) -> bool:
        top = name.split(".")[0]
        return top == "pipeline" or name == "inference" or is_domain(name)

    assert violations("pipeline", allowed) == []


def test_only_the_project_itself_imports_the_project() -> None:
    def allowed(module: str, name: str) -> bool:
        return not name.startswith("orchestrator_site")

    for package in ("inference", "pipeline", "harness"):
        assert violations(package, allowed) == []


def test_the_harness_imports_no_application_code() -> None:
    def allowed(module: str, name: str) -> bool:
        return name.split(".")[0] == "harness"

    assert violations("harness", allowed) == []


@pytest.mark.parametrize("package", ["bench", "scripts"])
def test_tools_share_the_harness_not_the_tests(package: str) -> None:
    def allowed(module: str, name: str) -> bool:
        return name.split(".")[0] != "tests"

    assert violations(package, allowed) == []


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "late.py"
    source.write_text("def f():\n    from pipeline import worker\n    import inference.views\n")
    assert imports(source) == {"pipeline", "pipeline.worker", "inference.views"}
