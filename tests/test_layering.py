"""The library core imports nothing from the GLUE recipe, so users of the library never load the application."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xtc_ds"
RECIPE = ("xtc_ds.recipes",)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_core_modules_do_not_import_the_recipe():
    core = [p for p in PACKAGE.rglob("*.py") if "recipes" not in p.relative_to(PACKAGE).parts]
    assert len(core) > 20
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imports(path) if n.startswith(RECIPE)) for path in core
    }
    assert not {path: names for path, names in offenders.items() if names}
