"""Shared test setup: the local control plane's fixtures come from the plugin ``cluster_plugin.py``
(``cluster``, ``kube``, ``namespace``, ``gpu_nodes``; its docstring lists them); the check below keeps
test module basenames unique.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["cluster_plugin"]


def pytest_configure(config: pytest.Config) -> None:
    # tests/ is not a package: pytest imports each test module by its basename, so two folders holding
    # the same basename break collection with an obscure "import file mismatch". Say it plainly.
    seen: dict[str, Path] = {}
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        if path.name == "conftest.py":
            continue
        if path.name in seen:
            raise pytest.UsageError(
                f"tests/ modules need unique basenames: {seen[path.name]} and {path} (prefix the area: "
                f"test_<area>_*.py)"
            )
        seen[path.name] = path
