"""The shape of the code: knotify's modules import each other without a circle.

The import graph is read from the source with ``ast`` (imports under
``TYPE_CHECKING`` and inside functions count too: a circle hidden from the
interpreter is still a circle for whoever reads the code). Importing
``knotify.a.b`` also runs ``knotify/a/__init__.py``, so it counts as an import
of the package ``knotify.a`` as well (except from inside ``knotify.a``, which that
package's ``__init__`` is already running for).
"""

from __future__ import annotations

import ast
from pathlib import Path

import knotify

ROOT = Path(knotify.__file__).parent


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ["knotify", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The module ``name`` is, or the one it is a name in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The knotify modules ``name`` imports (with the packages that brings in)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # ``from knotify.a import b`` imports the module knotify.a.b if there is one.
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known
                       else module for alias in node.names]
        for target in targets:
            if not target.startswith("knotify"):
                continue
            owner = _owner(target, known)
            if owner is None:
                continue
            found.add(owner)
            while "." in owner:
                owner = owner.rpartition(".")[0]
                if owner not in ancestors:
                    found.add(owner)
    found.discard(name)
    found.discard("knotify")
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(edges[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(edges.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def describe(component: list[str], edges: dict[str, set[str]]) -> str:
    members = set(component)
    return "\n".join(f"  {name} -> {', '.join(sorted(edges[name] & members))}"
                     for name in component)


def test_the_graph_sees_every_kind_of_import() -> None:
    edges = graph()
    assert "knotify.vocab" in edges["knotify.keepalived"]          # from knotify.vocab import
    assert "knotify.spool" in edges["knotify.hook"]                # from knotify import spool
    assert "knotify.zmtp" in edges["knotify.hook"]                 # inside a function
    assert "knotify.supervisor" in edges["knotify.metrics"]        # under TYPE_CHECKING
    assert "knotify.actions" in edges["knotify.executor"]          # a package's __init__
    assert "knotify.actions" not in edges["knotify.actions.exec"]  # ... but not its own


def test_cycles_are_found_and_named() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [["a", "b", "c"]]
    assert "a -> b" in describe(["a", "b", "c"], edges)


def test_no_import_cycle() -> None:
    edges = graph()
    found = cycles(edges)
    assert not found, "import cycles among knotify's modules:\n" + "\n\n".join(
        describe(component, edges) for component in found)


def test_leaves_import_nothing_of_knotify() -> None:
    edges = graph()
    for leaf in ("knotify.vocab", "knotify.errors", "knotify.sqlglob", "knotify.clock"):
        assert edges[leaf] == set(), f"{leaf} imports {sorted(edges[leaf])}"


def test_stores_import_only_what_they_persist() -> None:
    """Storage is at the bottom: a store knows the words, the errors, the database layer
    (and the SQL glob filters, a leaf), the values it keeps and the modules of its own
    package (store/outbox/), never actions, the alert engine, the config or the router."""
    allowed = {"knotify.vocab", "knotify.errors", "knotify.sqlglob", "knotify.store",
               "knotify.store.db",
               "knotify.event", "knotify.tracker", "knotify.outcome",
               "knotify.alerts", "knotify.alerts.grouping", "knotify.alerts.stream"}
    edges = graph()
    stores = [name for name in edges if name.startswith("knotify.store.")]
    assert {"knotify.store.db", "knotify.store.events", "knotify.store.outbox",
            "knotify.store.silences", "knotify.store.peers", "knotify.store.alertmanager",
            "knotify.store.rule_since"} <= set(stores)
    for store in stores:
        own = {name for name in stores if name.split(".")[:3] == store.split(".")[:3]}
        assert edges[store] - own <= allowed, \
            f"{store} imports {sorted(edges[store] - own - allowed)}"
