"""The shape of the code: files that read top to bottom, functions that fit on a screen, imports that flow one way."""

from __future__ import annotations

import ast

from conftest import REPO

PACKAGES = ("bench", "export", "compress", "pipeline", "edgeqa")
MAX_MODULE_LINES = 420  # "about 400"
MAX_FUNCTION_LINES = 80
# Which of our packages each may import: bench sits under everything, export and compress are siblings over it,
# pipeline (recipes) drives them all, and the package root (API, CLI) sits on top.
MAY_IMPORT = {
    "bench": {"bench"},
    "export": {"bench", "export"},
    "compress": {"bench", "compress"},
    "pipeline": {"bench", "export", "compress", "pipeline"},
    "edgeqa": set(PACKAGES),
}


def sources(folders=PACKAGES):
    for folder in folders:
        yield from sorted((REPO / folder).rglob("*.py"))


def our_imports(tree: ast.AST) -> set[str]:
    """The edgeqa subpackages a module imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "edgeqa" and len(parts) > 1 and parts[1] in PACKAGES:
                found.add(parts[1])
            elif parts[0] == "edgeqa" and len(parts) > 1:
                found.add("edgeqa")
    return found


def test_no_module_is_longer_than_about_400_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in sources((*PACKAGES, "tests"))
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not long


def test_imports_flow_one_way():
    wrong = []
    for path in sources():
        package = path.relative_to(REPO).parts[0]
        for imported in our_imports(ast.parse(path.read_text())) - MAY_IMPORT[package]:
            wrong.append(f"{path.relative_to(REPO)} imports edgeqa.{imported}")
    assert not wrong


def test_the_import_check_sees_lazy_and_from_imports():
    code = "def f():\n    from edgeqa.export.onnx import x\nimport edgeqa.compress.train\nfrom edgeqa import pipeline\n"
    assert our_imports(ast.parse(code)) == {"export", "compress", "pipeline"}


MAX_LOCAL_IMPORTS = 20  # of our own modules, inside functions: only where they keep torch (or a cycle) out


def local_imports(tree: ast.AST) -> list[str]:
    """`from edgeqa... import` statements inside functions (each counted once, also in nested functions)."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("edgeqa"):
                    found[id(inner)] = f"{inner.lineno}: from {inner.module} import ..."
    return list(found.values())


def test_own_modules_are_imported_at_the_top_but_where_they_would_pull_in_torch():
    found = [f"{p.relative_to(REPO)}:{line}" for p in sources() for line in local_imports(ast.parse(p.read_text()))]
    assert len(found) <= MAX_LOCAL_IMPORTS, "\n".join(found)
    nested = "def f():\n def g():\n  from edgeqa.bench import qa\n from edgeqa.export import onnx\nimport edgeqa\n"
    assert len(local_imports(ast.parse(nested))) == 2
