"""vibe.engines: one record per engine file format -- everything vibe knows about consuming a placement.

A format's record (``Engine``) says, in one place: its name (the MoEDeployment's ``spec.output.formats``
value, ``vibe plan --format``, ``vibe serving init --engine-file NAME=PATH``), its ConfigMap key, its writer
from a placement result, its reader back to a ``Placement``, its fit check against the engine as launched,
the files ``vibe serving init`` writes, its statistics reader (engine counts -> vibe's loads), what an
update can do (``restart`` or ``live``), and how the engine splits an expert's tokens over its replicas (the
dispatch ``vibe.placement.cost.evaluate`` prices). The operator's output, ``vibe plan``, ``vibe serving
init``/``watch``/``export-loads`` loop over ``ENGINES``; adding an engine is one module here and one line in
``ENGINES`` (ARCHITECTURE.md, "Add an engine").

Pure (numpy, json, yaml; safetensors and torch only where a format needs them): no Kubernetes. Layer:
above ``vibe.placement`` (writers take its ``Result``, readers give its ``Placement``), below the
components; the format-independent half of the ConfigMap contract (meta key, hash, generation) is
``vibe.contract``.

Modules: ``canonical`` (``vibe``: placement.json), ``sglang``, ``eplb``, ``trtllm``, ``vllm`` (one per
format);
``settings`` (the engine's launch parameters), ``loads`` (statistics -> loads), ``errors``,
``torchfile`` (torch files without torch), ``_common`` (shared checks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, get_args

from vibe.engines import canonical, eplb, sglang, trtllm, vllm
from vibe.engines.errors import EngineError
from vibe.engines.loads import Loads
from vibe.engines.settings import EngineSettings

if TYPE_CHECKING:
    from vibe.placement import Fleet, Placement, Result

#: What a newer placement can do to a running engine: roll the serving group, or reach it live.
Update = Literal["restart", "live"]


@dataclass(frozen=True)
class Engine:
    """One output format and what vibe knows about the engine that consumes it.

    Attributes:
        name: the one name of the format everywhere (CRD enum, ``vibe plan --format``, ``--engine-file``).
        key: the ConfigMap key (and ``vibe plan``'s default file name).
        engine: the engine in words (docs, messages).
        write: ``(result, fleet, baseline) -> bytes``, deterministic.
        parse: the key's text -> document (``ValueError`` when unreadable).
        read: ``(document, slots_per_gpu=, num_experts=) -> Placement``.
        fit: ``(document, settings) -> the document for this engine as launched``, or ``EngineError``;
            None when no engine reads the format (``vibe``).
        width: physical slots per layer of a fitted document.
        permute: apply a slot permutation to a fitted document (``--follow-gpus``).
        files: ``(fitted document, path, settings) -> {path: bytes}`` that ``vibe serving init`` writes.
        loads: ``(path, steps=, first_moe_layer=, moe_layers=, assignment=) -> Loads`` from the
            engine's statistics, or None.
        loads_source: what the load ConfigMap's ``vibe.dev/loads-source`` annotation says they came from.
        updates: what an update can do to a running engine.
        dispatch: how the engine splits an expert's tokens over its replicas (``vibe.placement.dispatch``).
        replica_weights: whether the format carries, and its consumer runs, per-slot replica weights (the
            ``weighted`` replica split); ``check_replica_split`` refuses the split for any format without.
        dispatch_source: where in the engine's source its replica dispatch is (upstream file and symbol).
        aliases: older spellings still accepted (deprecated).
    """

    name: str
    key: str
    engine: str
    write: Callable[[Result, Fleet, Result | None], bytes]
    parse: Callable[[str], Any]
    read: Callable[..., Placement]
    fit: Callable[[Any, EngineSettings], dict[str, Any]] | None = None
    width: Callable[[dict[str, Any]], int] | None = None
    permute: Callable[[dict[str, Any], list[int]], dict[str, Any]] | None = None
    files: Callable[[dict[str, Any], Path, EngineSettings], dict[Path, bytes]] | None = None
    loads: Callable[..., Loads] | None = None
    loads_source: str = ""
    updates: tuple[Update, ...] = ("restart",)
    dispatch: str = "even"
    replica_weights: bool = False
    dispatch_source: str = ""
    aliases: tuple[str, ...] = ()


def _record(module: ModuleType, engine: str, **kw: Any) -> Engine:
    return Engine(
        name=module.NAME,
        key=module.KEY,
        engine=engine,
        write=module.write,
        parse=module.parse,
        read=module.read,
        fit=getattr(module, "fit", None),
        width=getattr(module, "width", None),
        permute=getattr(module, "permute", None),
        files=getattr(module, "files", None),
        loads=getattr(module, "loads", None),
        loads_source=getattr(module, "LOADS_SOURCE", ""),
        dispatch=getattr(module, "DISPATCH", "even"),
        replica_weights=bool(getattr(module, "REPLICA_WEIGHTS", False)),
        dispatch_source=getattr(module, "DISPATCH_SOURCE", ""),
        **kw,
    )


#: Every format, in the order the ConfigMap's placement is read back (the first key present wins).
ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        _record(canonical, "vibe (no engine: GPUs, figures)", aliases=("placement",)),
        _record(sglang, "SGLang"),
        _record(eplb, "DeepSeek EPLB tensors"),
        _record(trtllm, "TensorRT-LLM (wide EP)"),
        _record(vllm, "vLLM (EPLB policy plugin)", updates=("live",)),
    )
}

#: The formats' names as a type (command-line choices); the same names as ``ENGINES``, in its order.
FormatName = Literal["vibe", "sglang", "eplb", "trtllm", "vllm"]
#: A format's name or a deprecated spelling (``vibe plan --format placement``).
FormatOrAlias = Literal[FormatName, "placement"]
if get_args(FormatName) != tuple(ENGINES):  # a record added without its name here, or the reverse
    raise AssertionError(f"FormatName {get_args(FormatName)} must list ENGINES {tuple(ENGINES)}")

#: Deprecated spellings -> the format's name.
ALIASES: dict[str, str] = {alias: e.name for e in ENGINES.values() for alias in e.aliases}
if set(get_args(FormatOrAlias)) != set(ENGINES) | set(ALIASES):
    raise AssertionError("FormatOrAlias must list ENGINES and their aliases")


def get(name: str) -> Engine:
    """The record of a format by its name or a deprecated alias; ``EngineError(InvalidArgument)`` else."""
    name = ALIASES.get(name, name)
    if name not in ENGINES:
        raise EngineError("InvalidArgument", f"unknown format {name!r} (one of {', '.join(ENGINES)})")
    return ENGINES[name]


def check_replica_split(split: str, formats: Iterable[str]) -> None:
    """Refuse the ``weighted`` replica split when a format cannot carry the weights to an engine that runs
    them (``EngineError(InvalidArgument)`` naming the format and its engine's dispatch); ``even`` always
    passes. A placement written for such an engine would run evenly, not as planned."""
    if split == "even":
        return
    for name in formats:
        e = get(name)
        if not e.replica_weights:
            raise EngineError(
                "InvalidArgument",
                f"the {split} replica split needs a dispatch that takes weights; format {e.name} "
                f"({e.engine}) cannot: {e.dispatch_source}. Use replica split even, or output format "
                "vibe only (vibe's own dispatch)",
            )


def by_key() -> dict[str, Engine]:
    """ConfigMap key -> record."""
    return {e.key: e for e in ENGINES.values()}


__all__ = [
    "ALIASES",
    "ENGINES",
    "Engine",
    "EngineError",
    "EngineSettings",
    "FormatName",
    "FormatOrAlias",
    "Loads",
    "Update",
    "by_key",
    "check_replica_split",
    "get",
]
