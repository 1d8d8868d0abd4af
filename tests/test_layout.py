"""The package layout promised in docs/architecture.md: few top-level modules, rooms that only
use the rooms below them, no import cycles, and `training` importable without Dagster."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pointvid_pipeline"
# A room may import the rooms listed before it (and itself), never one listed after it.
ROOM_ORDER = ("top", "storage", "stages", "synthetic", "evaluation", "backends", "tools", "pipeline", "dagster_defs", "entry")
TOP_LEVEL_ROOM = {"clip": "top", "rejections": "top", "settings": "top", "pipeline": "pipeline", "dataset": "pipeline", "cli": "entry", "definitions": "entry"}


def module_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (lazy imports included)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported |= {target for target in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if target in modules}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name in modules}
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{name}: use absolute imports"
        graph[name] = {m for m in imported if m != name and not modules[m].name == "__init__.py"}
    return graph


def room_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:  # the package itself: __version__
        return "top"
    if len(parts) == 2:  # a top-level module or a room's __init__
        return TOP_LEVEL_ROOM.get(parts[1], parts[1])
    return parts[1]


def test_top_level_holds_at_most_ten_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= 10, modules
    assert set(p.stem for p in PACKAGE.glob("*.py")) - {"__init__"} == set(TOP_LEVEL_ROOM)


def test_no_import_cycles():
    graph = module_imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_rooms_only_use_rooms_below_them():
    wrong = []
    for module, imported in module_imports().items():
        here = ROOM_ORDER.index(room_of(module))
        wrong += [f"{module} -> {target}" for target in imported if ROOM_ORDER.index(room_of(target)) > here]
    assert wrong == []


def test_stage_modules_do_not_import_dagster_or_torch_at_import_time():
    for path in (PACKAGE / "stages").glob("*.py"):
        tree = ast.parse(path.read_text())
        top = {a.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for a in node.names}
        top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
        assert not top & {"dagster", "torch", "transformers"}, path.name


def test_training_imports_without_dagster():
    code = "import sys, training.fit, training.data, training.losses; assert not any(m == 'dagster' or m.startswith('dagster.') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
