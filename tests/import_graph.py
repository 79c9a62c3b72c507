"""The import graph of ``src/pretrade``, read from the source, and its drawing.

Used by tests/test_architecture.py (no cycles, layers respected, the drawing
in docs/architecture.md is current) and by ``make architecture``, which
rewrites that drawing::

    .venv/bin/python tests/import_graph.py --write docs/architecture.md

Every ``import`` counts, also one inside a function or under
``TYPE_CHECKING``: a lazy import is still a dependency.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "pretrade"

#: The rooms of the package, bottom first: a module may import its own room
#: and the rooms below it, never one above. ``v1`` (generated) and ``_core``
#: (compiled) are the ground; ``cli``, ``desk`` and ``__main__`` the roof (the
#: desk is a gRPC client like the CLI, and ``pretrade serve --desk`` starts it).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("v1", "_core"),
    ("engine",),
    ("audit",),
    ("state",),
    ("shards",),
    ("stream",),
    ("api",),
    ("app",),
    ("client",),
    ("cli", "desk", "__main__"),
)
#: What each room holds, for the drawing.
ROOMS: dict[str, str] = {
    "cli": "the pretrade command: parsing, tables, a client",
    "client": "the client library: orders routed to their account's owner",
    "desk": "the risk desk: a web page over the gateway (gRPC client, SSE)",
    "app": "settings, security, server assembly, dev Redis, demo book",
    "api": "gRPC: servicer, request checks, status map, interceptors, health",
    "stream": "StreamPortfolio fan-out",
    "state": "Redis is the truth: schema, sync, prices, journal, halts",
    "shards": "account ownership: slots of {ACC}, shard leases, the shard map",
    "audit": "the audit trail: format, writer, reader",
    "engine": "table, limits, fixed point, the twin; errors, ids, names",
    "_core": "compiled: the mapped table and the check pipeline",
    "v1": "generated protobuf and gRPC code",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every Python module of the package (the compiled core by its .so package face)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "v1" in path.relative_to(PACKAGE).parts[:1] and path.name != "__init__.py":
            # generated: the drawing shows the package, not its files
            found.setdefault("pretrade.v1", PACKAGE / "v1" / "__init__.py")
            continue
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue  # the package's face: its version, nothing else
        found[module_name(path)] = path
    return found


def _imported(tree: ast.AST, here: str) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[:-node.level] if node.level else []
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}"


def graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``; submodules of v1 and _core fold in."""
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        if name == "pretrade.v1":
            continue
        for target in _imported(ast.parse(path.read_text()), name):
            if not target.startswith("pretrade"):
                continue
            for prefix in ("pretrade.v1", "pretrade._core"):
                if target.startswith(prefix + ".") or target == prefix:
                    target = prefix
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != "pretrade":
                edges[name].add(target)
    return edges


def room_of(module: str) -> str:
    """``pretrade.state.sync`` -> ``state``; ``pretrade.__main__`` -> ``__main__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(room: str) -> int:
    for number, rooms in enumerate(LAYERS):
        if room in rooms:
            return number
    raise KeyError(f"room {room!r} is on no layer: add it to LAYERS in tests/import_graph.py")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _node(module: str) -> str:
    return module.replace(".", "_").replace("__", "")


def _label(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 2:  # a package (its __init__), or __main__
        return parts[1] if parts[1] == "__main__" else parts[1] + "/__init__"
    return parts[-1]


def _shown(edges: dict[str, set[str]]) -> set[str]:
    """Modules worth a box: every module with an arrow in or out (empty faces are left out)."""
    touched = {target for targets in edges.values() for target in targets}
    return {module for module, targets in edges.items() if targets or module in touched}


def mermaid(edges: dict[str, set[str]]) -> str:
    """The drawing: rooms as boxes, roof to ground, files inside, imports as arrows."""
    lines = ["```mermaid", "flowchart TB"]
    rooms_in_order = [room for layer in reversed(LAYERS) for room in layer]
    for room in rooms_in_order:
        members = sorted(m for m in _shown(edges) if room_of(m) == room)
        if not members:
            continue
        title = f"{room}/: {ROOMS[room]}" if room in ROOMS else room
        lines.append(f'  subgraph {_node("room_" + room)}["{title}"]')
        for member in members:
            lines.append(f'    {_node(member)}["{_label(member)}"]')
        lines.append("  end")
    for source in sorted(edges):
        for target in sorted(edges[source]):
            lines.append(f"  {_node(source)} --> {_node(target)}")
    lines.append("```")
    return "\n".join(lines)


def room_mermaid(edges: dict[str, set[str]]) -> str:
    """Rooms only: one arrow where any file of one imports any file of the other."""
    pairs = sorted({(room_of(s), room_of(t)) for s in edges for t in edges[s]
                    if room_of(s) != room_of(t)})
    lines = ["```mermaid", "flowchart TB"]
    for layer in reversed(LAYERS):
        for room in layer:
            if room in ROOMS:
                lines.append(f'  {_node("r_" + room)}["{room}/<br/>{ROOMS[room]}"]')
    for source, target in pairs:
        if source in ROOMS and target in ROOMS:
            lines.append(f"  {_node('r_' + source)} --> {_node('r_' + target)}")
    lines.append("```")
    return "\n".join(lines)


HEADER = """# Architecture: the rooms of `src/pretrade` and their imports

Generated from the source by `make architecture` (`tests/import_graph.py`);
`tests/test_architecture.py` fails when this file is not what the code
draws, when any import cycle appears, or when a room imports one above it.
An order flows `api -> engine -> table` (the servicer calls the compiled
pipeline on the mapped table); Redis flows `state -> table` (the sync writes
what Redis holds into it).

Layers, roof first: `cli` / `app` / `api` / `stream` / `state` / `audit` /
`engine` / `_core`, `v1`. A room may import only itself and the rooms below.
"""


def document() -> str:
    edges = graph()
    return (f"{HEADER}\n## Rooms\n\n{room_mermaid(edges)}\n\n"
            f"## Files (an arrow: the file imports the other)\n\n{mermaid(edges)}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", help="write the document to FILE")
    args = parser.parse_args()
    text = document()
    if args.write:
        Path(args.write).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
