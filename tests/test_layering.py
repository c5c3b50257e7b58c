"""The two layers, enforced: the kernel (``newsmon/``) below the stage packages (``ingest/``, ``enrich/``,
``sinks/``), the application (``newsmon/app/``) on top; and no product module over 600 lines.

Every import counts, at module level or inside a function, and so does a kernel string that names a
stage or application module (a preload list, an ``import_module`` argument).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAGE_PACKAGES = ("ingest", "enrich", "sinks")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the product."""
    found = {}
    for package in ("newsmon", *STAGE_PACKAGES):
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _layer(module: str) -> str:
    if module == "newsmon.app" or module.startswith("newsmon.app."):
        return "app"
    if module.split(".")[0] == "newsmon":
        return "kernel"
    return module.split(".")[0]  # one of the stage packages


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _allowed(importer: str, imported: str) -> bool:
    source, target = _layer(importer), _layer(imported)
    if source == "app" or target not in ("kernel", "app", *STAGE_PACKAGES):
        return True  # the application may use everything; third-party and stdlib imports are not ours to rule
    if source == "kernel":
        return target == "kernel"
    return target in ("kernel", source)  # a stage package: the kernel and itself


def violations() -> list[str]:
    problems = []
    for module, path in sorted(_modules().items()):
        for line, imported in _imports(path):
            if not _allowed(module, imported):
                problems.append(f"{path.relative_to(REPO)}:{line}: {_layer(module)} module {module} imports {imported}")
        if _layer(module) == "kernel":
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(
                        rf"({'|'.join(STAGE_PACKAGES)}|newsmon\.app)(\.\w+)*", node.value):
                    problems.append(f"{path.relative_to(REPO)}:{node.lineno}: kernel module {module} names "
                                    f"{node.value!r}")
    return problems


def test_no_import_crosses_the_layers():
    assert violations() == []


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The checker itself: each forbidden direction is one it reports."""
    assert not _allowed("newsmon.runner", "ingest.extract")
    assert not _allowed("newsmon.settings", "sinks.query")
    assert not _allowed("newsmon.runner", "newsmon.app.stages")
    assert not _allowed("sinks.alerts", "enrich.keywords")
    assert not _allowed("ingest.feeds", "newsmon.app.cli")
    assert _allowed("sinks.alerts", "sinks.channels") and _allowed("ingest.pages", "newsmon.errors")
    assert _allowed("newsmon.app.stages", "ingest.poller") and _allowed("newsmon.bus", "sqlite3")
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from sinks.alerts import AlertLog\nimport enrich.language as lang\n")
    assert sorted(_imports(module)) == [(2, "sinks.alerts"), (3, "enrich.language")]


def test_the_application_exists_beside_the_kernel():
    modules = _modules()
    assert {"newsmon.app", "newsmon.app.cli", "newsmon.app.api", "newsmon.app.stages", "newsmon.app.runtime"} <= set(modules)
    assert not {"newsmon.cli", "newsmon.pipeline", "newsmon.api", "newsmon.demo"} & set(modules)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_is_over_600_lines(module):
    lines = len(_modules()[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines"
