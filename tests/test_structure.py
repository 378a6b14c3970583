"""The package's shape, read from the source with `ast` (nothing imported): no entry module (workflow_lib/cli/*)
imports another module of cli/, no module imports another module's private (_name) name, and every test file that
the code or the docs cite exists."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "workflow_lib"
TESTS = REPO / "tests"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] == "tests":
        parts = parts[1:]  # tests import each other's helpers by bare name (eval_setup, distill_setup)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for each `from module import name`, (module, None) for each `import module`; relative imports
    resolved, imports inside functions included."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found += [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
    return found


def sources() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *TESTS.glob("*.py")])


def test_no_entry_module_imports_another_cli_module():
    offending = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        if path.name == "__init__.py":
            continue
        for module, name in imported(path):
            targets = [module] if name is None else [module, f"{module}.{name}"]
            if any(t.startswith("workflow_lib.cli.") or (t == "workflow_lib.cli" and name) for t in targets):
                offending.append(f"{path.relative_to(REPO)} imports {module}{'.' + name if name else ''}")
    assert not offending, "entry modules import cli modules (shared code belongs in a library module, e.g. " \
                          "workflow_lib/arguments.py):\n" + "\n".join(offending)


def test_no_module_imports_a_private_name():
    ours = {module_name(path) for path in sources()}
    offending = []
    for path in sources():
        for module, name in imported(path):
            if name is None or module not in ours or module == module_name(path):
                continue
            if name.startswith("_") and not name.startswith("__"):
                offending.append(f"{path.relative_to(REPO)} imports {module}.{name}")
    assert not offending, "private names imported across modules (make them public where they are shared):\n" + \
        "\n".join(offending)


def test_the_checks_see_what_they_look_for(tmp_path):
    """The import reader resolves relative imports and finds imports inside functions: what the checks rely on."""
    found = imported(PACKAGE / "cli" / "evaluate.py")
    assert ("workflow_lib.arguments", "add_task_arguments") in found
    assert ("workflow_lib.data.formats", "read_corpus") in found  # imported inside main()
    assert ("workflow_lib.training.label_cache", "LabelCacheConfig") in imported(PACKAGE / "cli" / "label_cache.py")


CITED_TEST = re.compile(r"tests/[A-Za-z0-9_]+\.py")


def test_every_cited_test_file_exists():
    """A module, doc or README that names a test file as where something is tested names one that exists."""
    texts = [*PACKAGE.rglob("*.py"), *(REPO / "docs").rglob("*.md"), REPO / "README.md", *(REPO / "rules").glob("*.smk")]
    missing = sorted({f"{path.relative_to(REPO)}: {cited}" for path in texts
                      for cited in CITED_TEST.findall(path.read_text(encoding="utf-8"))
                      if not (REPO / cited).is_file()})
    assert not missing, "cited test files that do not exist:\n" + "\n".join(missing)
