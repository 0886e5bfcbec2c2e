"""The package's layers, read from the source: no import cycle between moai_export's subpackages
and root modules, and no package importing another's private (underscore) names."""

from __future__ import annotations

import ast
from pathlib import Path

import moai_export

ROOT = Path(moai_export.__file__).parent


def _imports(path: Path) -> list[tuple[list[str], list[str]]]:
    """(module path under moai_export, imported names) of every moai_export import in a file,
    function-local ones included."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1]  # what a relative import starts from (the same for __init__.py)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                module = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "moai_export":
                module = node.module.split(".")[1:]
            else:
                continue
            if node.module:
                found.append((module, names))
            else:  # `from . import x`: each name is a module
                found += [(module + [name], []) for name in names]
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[1:], []) for a in node.names if a.name.split(".")[0] == "moai_export"]
    return found


def _unit(module: list[str]) -> str:
    """The layer unit a module belongs to: its subpackage, or the root module itself."""
    return module[0] if module else "moai_export"


def _unit_of(path: Path) -> str:
    module = list(path.relative_to(ROOT).with_suffix("").parts)
    return _unit(module[:-1] if module[-1] == "__init__" else module)


def package_graph() -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit -> files that import it. `__main__.py` files are left out: they are
    run as scripts (`python -m moai_export.train`), never imported."""
    edges: dict[str, dict[str, set[str]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        source = _unit_of(path)
        for module, _ in _imports(path):
            target = _unit(module)
            if target != source:
                edges.setdefault(source, {}).setdefault(target, set()).add(str(path.relative_to(ROOT)))
    return edges


def cycles(edges: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Strongly connected groups of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(set(edges) | {w for targets in edges.values() for w in targets}):
        if v not in index:
            visit(v)
    return groups


def test_no_import_cycle_between_subpackages_and_root_modules():
    edges = package_graph()
    assert "evaluation" in edges.get("train", {}) and "benchmark" not in edges.get("train", {})
    assert set(edges.get("evaluation", {})) <= {"core"}  # shared by every layer, so it sits below them
    found = cycles(edges)
    detail = [f"{a} -> {b} ({', '.join(sorted(edges[a][b]))})" for group in found for a in group for b in group
              if b in edges.get(a, {})]
    assert not found, "package import cycle: " + "; ".join(detail)


def test_no_package_imports_another_packages_private_names():
    private = []
    for path in sorted(ROOT.rglob("*.py")):
        source = _unit_of(path)
        for module, names in _imports(path):
            if _unit(module) != source:
                private += [f"{path.relative_to(ROOT)}: {'.'.join(module)}.{n}" for n in names if n.startswith("_")]
    assert not private, private


# The layers, lowest first: a folder imports only folders of its own layer or below. Same-layer
# imports are allowed where listed in SAME_LAYER (the engine runs the torch embedder's model).
LAYERS = (
    ("core",),  # foundation: errors, contract, input rules, batching, pooling, addresses
    ("model_files", "evaluation"),  # files on disk; evaluation code and data
    ("artifacts",),  # artifact directories, manifests, admission, the registry of kinds
    ("launchers",),  # the servers' launchers (standard library only)
    ("embedders", "engine"),  # the variants
    ("gates",),  # parity gates and verification records
    ("train", "example", "export", "embed_job"),  # the stages that write artifacts (and corpus vectors)
    ("gateway", "benchmark"),  # serving in front of Triton; measuring every variant
    ("commands", "integrations"),  # moai-export, moai-bench, the demo, verify; LangChain / LlamaIndex adapters
)
SAME_LAYER = {("engine", "embedders"), ("example", "train"), ("export", "train")}


def test_the_root_holds_only_layer_folders_and_each_imports_downward():
    modules = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
    assert not modules, f"modules at the package root (put each in its layer's folder): {modules}"
    layer = {unit: level for level, units in enumerate(LAYERS) for unit in units}
    folders = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(layer), f"folders without a layer, or layers without a folder: {folders ^ set(layer)}"
    upward = [f"{source} -> {target} ({', '.join(sorted(files))})"
              for source, targets in package_graph().items() if source in layer
              for target, files in targets.items() if target in layer
              if layer[target] > layer[source] or (layer[target] == layer[source] and (source, target) not in SAME_LAYER)]
    assert not upward, "imports that run up or across a layer: " + "; ".join(upward)
