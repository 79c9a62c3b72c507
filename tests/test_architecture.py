"""The package's shape is a test: no import cycles, rooms in layers, the drawing current.

The graph is read from the source (tests/import_graph.py); the layers are
``LAYERS`` there. docs/architecture.md is generated from the same graph
(``make architecture``), so the picture a newcomer reads is the code's.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from import_graph import LAYERS, PACKAGE, ROOT, cycles, document, graph, layer_of, room_of

EDGES = graph()


def test_the_package_has_no_import_cycle():
    assert cycles(EDGES) == []


def test_the_cycle_finder_finds_a_cycle():
    # The test above can only fail if this one passes.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_of_the_package_is_in_a_room_on_a_layer():
    for module in EDGES:
        layer_of(room_of(module))


@pytest.mark.parametrize("module", sorted(EDGES))
def test_a_module_imports_only_its_own_room_and_the_rooms_below(module):
    here = layer_of(room_of(module))
    upward = sorted(target for target in EDGES[module] if layer_of(room_of(target)) > here)
    assert not upward, f"{module} (layer {here}) imports {upward} from a layer above"


def test_every_folder_of_the_package_is_a_room():
    folders = {path.name for path in PACKAGE.iterdir()
               if path.is_dir() and path.name != "__pycache__"}
    rooms = {room for layer in LAYERS for room in layer}
    assert folders <= rooms, f"folders on no layer: {sorted(folders - rooms)}"


def test_the_architecture_drawing_is_what_the_code_draws():
    committed = (ROOT / "docs" / "architecture.md").read_text()
    assert committed == document(), "docs/architecture.md is stale: run `make architecture`"


def test_the_audit_reader_does_not_load_access_control_or_the_server():
    # `pretrade audit` reads Redis only: importing what it runs must not pull
    # in tokens, interceptors, the servicer or the gateway.
    probe = ("import sys, pretrade.cli.commands, pretrade.audit.query; "
             "print(sorted(m for m in sys.modules if m.startswith(('pretrade.api.access', "
             "'pretrade.api.servicer', 'pretrade.app.server', 'pretrade.state.sync'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]"


def test_readme_names_every_module_and_folder():
    readme = (ROOT / "README.md").read_text()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "v1" or path.name == "__init__.py":
            continue
        if path.name not in readme:
            missing.append(str(relative))
    for folder in {room for layer in LAYERS for room in layer} - {"__main__"}:
        if f"{folder}/" not in readme:
            missing.append(folder + "/")
    assert not missing, f"README's module table does not name {missing}"


def test_the_desk_never_loads_redis_or_the_state_room():
    # The desk is a client of the gateway: whatever the gateway owns it asks for
    # over gRPC, never from Redis.
    probe = ("import sys, pretrade.desk.process, pretrade.desk.web; "
             "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith(("
             "'redis.', 'pretrade.state', 'pretrade.audit', 'pretrade.app.server'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]"
