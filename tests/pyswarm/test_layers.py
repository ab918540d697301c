"""The packages' layering: manager/ and worker/ never import each other.

Host-local state (keys, this host's manager process, leaving) lives in
pyswarm/host.py, which both use; a manager-side change can then never break
the agent by an import, nor the other way round.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: Path) -> list[tuple[str, str]]:
    found = []
    for py in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(py.read_text(), str(py))):
            if isinstance(node, ast.Import):
                found += [(str(py.relative_to(ROOT)), a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                found.append((str(py.relative_to(ROOT)), node.module or ""))
            elif isinstance(node, ast.ImportFrom) and node.level > 1:
                found.append((str(py.relative_to(ROOT)), "." * node.level + (node.module or "")))
    return found


def test_manager_does_not_import_worker_and_worker_does_not_import_manager() -> None:
    crossing = [f"{where}: {name}" for where, name in _imports(ROOT / "manager")
                if name.startswith("pyswarm.worker") or name.startswith("..worker")]
    crossing += [f"{where}: {name}" for where, name in _imports(ROOT / "worker")
                 if name.startswith("pyswarm.manager") or name.startswith("..manager")]
    assert crossing == [], "manager/ and worker/ must talk through pyswarm/ (host.py, protocol.py):\n" + \
        "\n".join(crossing)
