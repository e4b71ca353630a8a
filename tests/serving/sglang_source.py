"""Which model architectures of an installed SGLang implement the expert-location hook, read from its source.

SGLang applies ``--init-expert-location`` (and its expert-distribution recorder works) only when the model
class that serves an architecture has ``get_model_config_for_expert_location``
(``ModelConfigForExpertLocation.from_model_config`` in ``sglang/srt/eplb/expert_location.py`` checks
``hasattr(model_class, ...)``; otherwise it returns None and the file is ignored). Architectures are the
``__name__`` of each top-level ``sglang/srt/models/*.py`` module's ``EntryClass`` (``ModelRegistry``).

Importing every model module needs SGLang's GPU-only kernels, so this reads the source with ``ast``:
classes and their bases across ``sglang/srt/models`` (bases resolved through the module's own classes
and its ``from ... import`` lines, inheritance followed), then each module's ``EntryClass``.

Run ``python tests/serving/sglang_source.py`` to print the list for ``vibe.engines.sglang``.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

HOOK = "get_model_config_for_expert_location"


@dataclass
class _Module:
    name: str  # dotted
    classes: dict[str, tuple[list[str], bool]] = field(default_factory=dict)  # name -> (bases, has hook)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (module, name)
    entry: list[str] = field(default_factory=list)  # local names in EntryClass
    top_level: bool = False


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):  # Generic[...] and the like
        return _base_name(node.value)
    return None


def _parse(path: Path, dotted: str, top_level: bool) -> _Module:
    mod = _Module(dotted, top_level=top_level)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = [b for b in (_base_name(x) for x in node.bases) if b]
            hook = any(
                isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == HOOK
                for item in node.body
            ) or any(
                isinstance(item, ast.Assign) and any(getattr(t, "id", None) == HOOK for t in item.targets)
                for item in node.body
            )
            mod.classes.setdefault(node.name, (bases, hook))
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                parts = dotted.split(".")[: -node.level]
                base = ".".join([*parts, node.module])
            for alias in node.names:
                mod.imports[alias.asname or alias.name] = (base, alias.name)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EntryClass" for t in node.targets):
            values = node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
            mod.entry = [n for n in (_base_name(v) for v in values) if n]
    return mod


def sglang_root() -> Path:
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("sglang is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def expert_location_architectures(root: Path | None = None) -> tuple[set[str], set[str]]:
    """(architectures whose model class has the hook, architectures without it) in SGLang at ``root``."""
    root = root or sglang_root()
    models_dir = root / "srt" / "models"
    modules: dict[str, _Module] = {}
    for path in sorted(models_dir.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        dotted = ".".join(rel.parts)
        modules[dotted] = _parse(path, dotted, top_level=path.parent == models_dir)

    def resolve(module: str, name: str, seen: frozenset[tuple[str, str]] = frozenset()) -> tuple[str, str]:
        """Where class ``name`` as seen from ``module`` is defined: (module, class name)."""
        key = (module, name)
        mod = modules.get(module)
        if mod is None or key in seen:
            return key
        if name in mod.classes:
            return key
        if name in mod.imports:
            target_module, target_name = mod.imports[name]
            return resolve(target_module, target_name, seen | {key})
        return key

    def has_hook(module: str, name: str, depth: int = 0) -> bool:
        module, name = resolve(module, name)
        mod = modules.get(module)
        if mod is None or name not in mod.classes or depth > 50:
            return False
        bases, hook = mod.classes[name]
        return hook or any(has_hook(module, b, depth + 1) for b in bases)

    with_hook: set[str] = set()
    without: set[str] = set()
    for dotted, mod in modules.items():
        if not mod.top_level:
            continue
        for local in mod.entry:
            where, real = resolve(dotted, local)
            (with_hook if has_hook(where, real) else without).add(real)
    return with_hook, without


if __name__ == "__main__":
    yes, no = expert_location_architectures()
    print(f"# {len(yes)} architectures with {HOOK}")
    for arch in sorted(yes):
        print(f'    "{arch}",')
    print(f"# {len(no)} without, e.g.: {', '.join(sorted(no)[:12])}")
