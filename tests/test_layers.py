"""The package's layering, read from the source by AST (nothing is imported): every import stays on its floor or
goes down (the floors are the README's module map), the two families never import each other, and no import,
however local, closes a cycle."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "crossgraft"
README = ROOT / "README.md"
FAMILIES = ("crossgraft.anomaly", "crossgraft.llava")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def floors_from_readme() -> dict[str, int]:
    """{module: floor} from the module map's rows (`| N name | `a.py`, `b/` | … |`); a folder places every module
    under it."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Module map") :]
    section = section[: section.index("\n#", 1)]
    floors: dict[str, int] = {}
    for row in re.finditer(r"^\| (\d+) [^|]*\| ([^|]*)\|", section, flags=re.M):
        floor = int(row.group(1))
        for entry in re.findall(r"`([^`]+)`", row.group(2)):
            if entry.endswith("/"):
                prefix = "crossgraft." + entry.rstrip("/").replace("/", ".")
                placed = [name for name in MODULES if name == prefix or name.startswith(prefix + ".")]
            else:
                placed = [module_name(PACKAGE / entry)]
            for name in placed:
                assert name in MODULES, f"the module map names {entry}, which is not in the package"
                assert name not in floors, f"the module map places {name} twice"
                floors[name] = floor
    return floors


def imports_of(path: Path) -> list[tuple[str, bool, int]]:
    """(imported crossgraft module, inside a function, line) for every import of the file; imports only for type
    checkers (`if TYPE_CHECKING:`) count too: they are the same dependency to a reader."""
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, local, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:  # `from crossgraft.anomaly import config` imports a module
                    full = f"{child.module}.{alias.name}"
                    found.append((full if full in MODULES else child.module, local, child.lineno))
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return [
        (name, local, line) for name, local, line in found if name == "crossgraft" or name.startswith("crossgraft.")
    ]


EDGES = {name: imports_of(path) for name, path in MODULES.items()}


def family(name: str) -> str | None:
    return next((f for f in FAMILIES if name == f or name.startswith(f + ".")), None)


def test_the_module_map_places_every_module_once():
    floors = floors_from_readme()
    unplaced = sorted(set(MODULES) - set(floors))
    assert not unplaced, f"modules the README's module map does not place on a floor: {unplaced}"


def test_no_import_climbs_a_floor():
    floors = floors_from_readme()
    climbing = [
        f"{MODULES[name].relative_to(ROOT)}:{line}: {name} (floor {floors[name]}) imports {target} "
        f"(floor {floors[target]})"
        for name, edges in EDGES.items()
        for target, _, line in edges
        if floors[target] > floors[name]
    ]
    assert not climbing, "\n".join(climbing)


def test_the_families_never_import_each_other():
    crossing = [
        f"{name} imports {target}"
        for name, edges in EDGES.items()
        for target, _, _ in edges
        if family(name) and family(target) and family(name) != family(target)
    ]
    assert not crossing, crossing


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that starts and ends on the same module, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once every path from it is checked
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_closes_a_cycle_not_even_inside_a_function():
    graph = {name: {target for target, _, _ in edges if target != name} for name, edges in EDGES.items()}
    cycle = find_cycle(graph)
    if cycle:
        local = [f"{a} -> {b}" for a, b in zip(cycle, cycle[1:]) if any(t == b and lo for t, lo, _ in EDGES[a])]
        pytest.fail(f"import cycle: {' -> '.join(cycle)}" + (f" (inside a function: {local})" if local else ""))


def test_the_cycle_finder_finds_a_cycle_through_a_local_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.slow  # starts processes
@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("crossgraft.anomaly.model", "crossgraft.anomaly.data"),  # the model floor loads no dataset code
        ("crossgraft.anomaly.config", "torch"),  # settings are pure
        ("crossgraft.llava.evaluate", "transformers.trainer"),  # evaluation does not load the Trainer
    ],
)
def test_importing_a_module_loads_nothing_above_it(module, absent):
    code = (
        f"import sys, {module}; loaded = sorted(m for m in sys.modules if m == {absent!r} or "
        f"m.startswith({absent!r} + '.')); print(loaded)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"importing {module} loaded {result.stdout.strip()}"


DOCUMENTED = [  # the model, loss and inference modules: every public function says what it takes and gives
    "crossgraft.anomaly.backbone",
    "crossgraft.anomaly.modules",
    "crossgraft.anomaly.model",
    "crossgraft.anomaly.losses",
    "crossgraft.anomaly.infer",
    "crossgraft.anomaly.detector",
    "crossgraft.anomaly.deploy.engines",
    "crossgraft.llava.masks",
    "crossgraft.llava.vision",
    "crossgraft.llava.modeling",
]


def public_functions(tree: ast.Module) -> list[ast.FunctionDef]:
    """Module-level functions and methods of public classes, without properties and dunder methods."""
    found = []
    for node in tree.body:
        members = node.body if isinstance(node, ast.ClassDef) and not node.name.startswith("_") else [node]
        for member in members:
            if not isinstance(member, ast.FunctionDef) or member.name.startswith("_"):
                continue
            if any(isinstance(d, ast.Name) and d.id == "property" for d in member.decorator_list):
                continue
            found.append(member)
    return found


@pytest.mark.parametrize("module", DOCUMENTED)
def test_public_functions_of_model_loss_and_inference_modules_have_docstrings(module):
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    bare = [f"{node.name} (line {node.lineno})" for node in public_functions(tree) if not ast.get_docstring(node)]
    assert not bare, f"{module}: public functions without a docstring: {bare}"
