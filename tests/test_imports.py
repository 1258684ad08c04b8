"""The import graph of `prunejax/`: library modules never import a CLI module, and no module imports
itself through others (a circle), counting imports inside functions too (a lazy import only hides a
circle from Python, not from a reader).

Read with `ast`, nothing is imported. An edge A -> B is an import in A of module B: `from prunejax import hf`
is an edge to `prunejax.hf`, `from prunejax.config import X` one to `prunejax.config`, and only a name that
is not a submodule (`from prunejax import load`) is an edge to the package's `__init__`. Importing a
submodule also runs its package's `__init__`; that is Python's mechanics, not a dependency of A on the
package's public names, so it is not an edge. Imports under `if TYPE_CHECKING:` never run and are skipped.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "prunejax"


# Circles that must stay, each with its reason. Empty: there are none.
ALLOWED_CIRCLES: dict[frozenset[str], str] = {}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


# Modules that are command lines (`cli.py` anywhere): argument parsing plus one call into the library.
# `prunejax.cli` dispatches the verbs to them; nothing else may import one.
CLI_MODULES = frozenset(m for m in modules() if m.rpartition(".")[2] == "cli")


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of import nodes that sit under `if TYPE_CHECKING:`."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The prunejax modules that module `name` (at `path`) imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 packages
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def circles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[frozenset[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.add(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(frozenset(component))
    return out


def test_the_graph_is_read():
    edges = graph()
    assert "prunejax.model" in edges["prunejax"]  # `from prunejax.model import forward`
    assert "prunejax.storage" in edges["prunejax.hf"]  # `from prunejax import distributed, storage`
    assert {"prunejax.cli", "prunejax.prune.cli", "prunejax.data.cli", "prunejax.evaluate.cli"} <= CLI_MODULES


def test_library_modules_import_no_cli_module():
    offenders = [
        f"{name} imports {target}"
        for name, targets in sorted(graph().items())
        if name not in CLI_MODULES
        for target in sorted(targets & CLI_MODULES)
    ]
    assert not offenders, "library code lives in CLI modules:\n  " + "\n  ".join(offenders)


def test_cli_modules_import_no_other_cli_module():
    edges = graph()
    offenders = [
        f"{name} imports {target}"
        for name in sorted(CLI_MODULES - {"prunejax.cli"})
        for target in sorted(edges[name] & CLI_MODULES)
    ]
    assert not offenders, "a CLI shares code with another CLI instead of the library:\n  " + "\n  ".join(offenders)


def test_no_import_circles():
    found = [c for c in circles(graph()) if c not in ALLOWED_CIRCLES]
    listed = "\n  ".join(" <-> ".join(sorted(c)) for c in found)
    assert not found, f"import circles among prunejax modules:\n  {listed}"


def test_circle_finder_on_literal_graphs():
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert sorted(map(sorted, circles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}))) == [["a", "b"], ["c", "d"]]
