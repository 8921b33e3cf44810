"""The packages depend one way: cli -> janus_cli -> janus_run -> janus_eval -> janus_train -> janus_data.

Read from the source (every import statement, inside functions too), so a lazy import that
reaches up the chain fails here as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ORDER = ("janus_data", "janus_train", "janus_eval", "janus_run", "janus_cli")  # each may import those before it


def imported_packages(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", ORDER)
def test_a_package_imports_only_the_packages_below_it(package):
    above = set(ORDER[ORDER.index(package) + 1 :]) | {"cli"}
    wrong = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & above)
        for path in sorted((REPO / package).rglob("*.py"))
        if imported_packages(path) & above
    }
    assert wrong == {}, f"{package} must not import {sorted(above)}"
