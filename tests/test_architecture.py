"""ARCHITECTURE.md's layer picture and prose say what the import contracts in pyproject.toml enforce.

The picture names every layer of the ``layers`` contract, top to bottom, and nothing else; the prose
names each module the "operator's decisions are pure" contract keeps free of Kubernetes. Editing one
without the other fails here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # the dev extra installs tomli there: the test runs on every supported Python, never skips
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> list[dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return list(config["tool"]["importlinter"]["contracts"])


def _picture() -> list[str]:
    """The vibe modules the layer picture names, in reading order (parenthesised remarks left out)."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text[text.index("## Components and layers") :]
    block = section[section.index("```\n") + 4 :]
    block = block[: block.index("```")]
    names: list[str] = []
    for line in block.splitlines():
        line = re.sub(r"\([^)]*\)", "", line)
        names += re.findall(r"\bvibe\.[a-z_]+", line)
    return names


def test_the_layer_picture_is_the_layers_contract() -> None:
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    rank = {m.strip(): i for i, row in enumerate(layers["layers"]) for m in row.split("|")}
    drawn = _picture()
    assert sorted(set(drawn)) == sorted(rank), "the picture and the contract name different modules"
    order = [rank[m] for m in drawn]
    assert order == sorted(order), f"the picture puts a layer above one the contract puts higher: {drawn}"


def test_the_pure_operator_modules_are_named_in_the_prose() -> None:
    (pure,) = [c for c in _contracts() if c["name"].startswith("the operator's decisions are pure")]
    text = " ".join((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").split())
    prose = text[text.index("The operator's decisions (") :]
    prose = prose[: prose.index(")")]
    named = set(re.findall(r"`([a-z_]+)`", prose))
    assert named == {m.removeprefix("vibe.operator.") for m in pure["source_modules"]}
