"""The library's import graph: the core never imports the GLUE recipe, nothing imports a layer above its own, and
no import cycle exists (module-level and in-function imports alike; docs/ARCHITECTURE.md has the layers)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xtc_ds"
RECIPE = ("xtc_ds.recipes",)

LAYERS = [
    (
        "base",
        [
            "xtc_ds._rank",
            "xtc_ds._compat",
            "xtc_ds._log",
            "xtc_ds._schema",
            "xtc_ds.errors",
            "xtc_ds.files",
            "xtc_ds.safe_load",
        ],
    ),
    ("quantizer math", ["xtc_ds.quant"]),
    ("ops", ["xtc_ds.ops"]),
    ("config", ["xtc_ds.config"]),
    ("infrastructure", ["xtc_ds.distributed", "xtc_ds.zero3", "xtc_ds.checkpoints", "xtc_ds.checkpoint_layout"]),
    ("modules", ["xtc_ds.nn"]),
    (
        "compression",
        [
            "xtc_ds.architectures",
            "xtc_ds.matching",
            "xtc_ds.state",
            "xtc_ds.pruning",
            "xtc_ds.inject",
            "xtc_ds.schedule",
            "xtc_ds.layer_reduction",
            "xtc_ds.distill",
            "xtc_ds.saved_state",
            "xtc_ds.compress",
        ],
    ),
    ("artefacts", ["xtc_ds.export", "xtc_ds.onnx_export", "xtc_ds.size"]),
    ("training", ["xtc_ds.runtime", "xtc_ds.augment", "xtc_ds.integrations"]),
    ("package", ["xtc_ds"]),
    ("command lines", ["xtc_ds.report", "xtc_ds.ops.build", "xtc_ds.export.__main__", "xtc_ds.size.__main__"]),
    ("applications", ["xtc_ds.recipes"]),
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    """Module -> the xtc_ds modules it imports: ``from pkg import mod`` imports ``pkg.mod`` (not ``pkg``, whose
    ``__init__`` re-exports its modules), ``from mod import name`` imports ``mod``."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    imported.add(submodule if submodule in modules else node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = {target for target in imported if target in modules} - {name}
    return graph


def _layer(module: str) -> int:
    matches = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} is in no layer of this test: add it to LAYERS (and to docs/ARCHITECTURE.md)"
    return max(matches)[1]


def test_core_modules_do_not_import_the_recipe():
    core = [p for p in PACKAGE.rglob("*.py") if "recipes" not in p.relative_to(PACKAGE).parts]
    assert len(core) > 20
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imports(path) if n.startswith(RECIPE)) for path in core
    }
    assert not {path: names for path, names in offenders.items() if names}


def test_no_module_imports_a_layer_above_its_own():
    graph = _graph()
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert len(graph) > 60 and not upward


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles
