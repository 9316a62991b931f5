"""The shape of the code: knotify's modules import each other without a circle, none is
longer than :data:`MAX_LINES`, and none uses another module's private names.

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
    assert "knotify.zmtp" in edges["knotify.client"]               # inside a function
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
    for leaf in ("knotify.vocab", "knotify.errors", "knotify.sqlglob", "knotify.wire",
                 "knotify.clock"):
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
        outside = {name for name in edges[store] - allowed
                   if not name.startswith("knotify.store.")}  # its own parts are fine
        assert not outside, f"{store} imports {sorted(outside)}"


# -- size ---------------------------------------------------------------------------------

#: A module longer than this holds more than one job: split it along its seams.
MAX_LINES = 400


def long_modules(limit: int = MAX_LINES) -> dict[str, int]:
    """knotify's modules longer than ``limit`` lines, with their length."""
    out: dict[str, int] = {}
    for name, path in modules().items():
        lines = len(path.read_text().splitlines())
        if lines > limit:
            out[name] = lines
    return out


def test_long_modules_are_found() -> None:
    lengths = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    longest = max(lengths, key=lambda name: lengths[name])
    assert long_modules(lengths[longest] - 1) == {longest: lengths[longest]}
    assert long_modules(lengths[longest]) == {}


def test_no_module_is_over_400_lines() -> None:
    found = long_modules()
    assert not found, f"modules over {MAX_LINES} lines:\n" + "\n".join(
        f"  {name}: {lines}" for name, lines in sorted(found.items()))


# -- private names --------------------------------------------------------------------------


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(name: str, path: Path, known: dict[str, Path]) -> list[str]:
    """Where module ``name`` uses a private name of another knotify module:
    ``from knotify.x import _y``, or ``x._y`` where ``x`` is a knotify module it imported
    (``import knotify.x as x``, ``from knotify import x``). The standard library's
    (``os._exit``, ``import _socket``) are not knotify's and are fine."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    bound: dict[str, str] = {}  # local name -> the knotify module it is
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("knotify") and alias.name in known:
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound[alias.name.partition(".")[0]] = "knotify"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if not module.startswith("knotify") or _owner(module, known) == name:
                continue
            for alias in node.names:
                full = f"{module}.{alias.name}"
                if full in known:
                    bound[alias.asname or alias.name] = full
                elif _private(alias.name):
                    found.append(f"{name}:{node.lineno}: from {module} import {alias.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        parts: list[str] = []
        value: ast.expr = node.value
        while isinstance(value, ast.Attribute):
            parts.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in bound:
            continue
        module = ".".join([bound[value.id], *reversed(parts)])
        if module in known and module != name:
            found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_private_uses_are_found(tmp_path: Path) -> None:
    known = {"knotify.a": tmp_path / "a.py", "knotify.b": tmp_path / "b.py",
             "knotify.p": tmp_path / "p" / "__init__.py", "knotify.p.c": tmp_path / "p" / "c.py"}
    source = (
        "import os\nimport _socket\nimport knotify.b\nimport knotify.b as bee\n"
        "from knotify import b\nfrom knotify.b import _hidden, shown\nfrom .p import c\n"
        "from knotify.p.c import _inner as alias\n"
        "os._exit(0)\nb.shown()\nb._one()\nbee._two\nknotify.b._three\nc._four\n"
        "self._mine = b\n")
    (tmp_path / "a.py").write_text(source)
    found = private_uses("knotify.a", tmp_path / "a.py", known)
    assert sorted(found) == sorted([
        "knotify.a:6: from knotify.b import _hidden",
        "knotify.a:8: from knotify.p.c import _inner",
        "knotify.a:11: b._one", "knotify.a:12: bee._two", "knotify.a:13: knotify.b._three",
        "knotify.a:14: c._four"])


def test_no_module_uses_another_modules_private_names() -> None:
    known = modules()
    found = [use for name, path in known.items() for use in private_uses(name, path, known)]
    assert not found, "private names used across modules (make them public API, or keep " \
        "them inside their module):\n" + "\n".join(f"  {use}" for use in found)
