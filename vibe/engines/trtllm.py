"""Format ``trtllm``: TensorRT-LLM's MoE load-balancer file (wide EP, static), its fit check and statistics.

Every fact below is read from TensorRT-LLM's source (NVIDIA/TensorRT-LLM); ``UPSTREAM`` names the file and
the commit each comes from, and ``tests/engines/test_engines_trtllm.py`` tests each rule under that name.
TensorRT-LLM has no wheel that installs on a machine without a GPU, so its checks are restated here.

* The engine takes the placement through its extra engine args (``trtllm-serve
  --extra_llm_api_options FILE``, Dynamo's ``--extra-engine-args FILE``): ``moe_config: {backend: WIDEEP,
  load_balancer: <path>}``. The path is read with ``yaml.safe_load`` into ``MoeLoadBalancerConfig(**doc)``
  (``TorchLlmArgs.validate_load_balancer``), a strict model of three keys: ``num_slots``,
  ``initial_global_assignments`` (``Dict[int, List[int]]``: decoder layer index -> the expert in each of
  the ``num_slots`` slots; slots rank-major, ``num_slots / ep_size`` per rank) and
  ``layer_updates_per_iter``. vibe writes ``layer_updates_per_iter: 0`` only: a value > 0 turns on the
  engine's own online balancer, which would move the experts away from vibe's placement.
* The keys are the *decoder* layer indices of the MoE layers: DeepSeek-V3's are 3..60 (its first three
  layers are dense). The operator does not know the model's dense layers, so the ConfigMap's file is
  keyed by MoE-layer ordinal (0..L-1, right as it is for models without dense layers) and ``fit`` (what
  ``vibe serving init`` runs, with the model's ``config.json``) re-keys it by ``first_k_dense_replace``.
* Its checks, each refused here first with both numbers: ``num_slots % ep_size == 0``
  (``MoeLoadBalancerConfig.setup``); every MoE layer present (``get_layer_initial_global_assignments``
  raises ``KeyError``) with exactly ``num_slots`` entries (``ValueError``); ``num_slots >= num_experts``
  and every expert, and only experts ``0..num_experts-1``, in every layer (the asserts of
  ``WideEPMoE.__init__``); at most 1024 experts (the route kernels are compiled for 1024,
  ``moeComputeRouteDevice``).
* It applies the file only for the architectures in ``moe_model_arch_list`` and with EP size > 1
  (``maybe_create_moe_load_balancer``); otherwise it silently ignores it. ``fit`` warns for an
  architecture outside the list this module read (newer releases list more).
* It splits an expert's tokens round-robin over the expert's replicas (``moeComputeRouteKernel``: the
  replica is ``key % replicaCount`` for consecutive tokens): an even split, ``DISPATCH = "even"``.
* Statistics: with ``EXPERT_STATISTIC_PATH`` and ``EXPERT_STATISTIC_ITER_RANGE=start-stop`` each rank
  counts, per iteration and MoE layer, the tokens routed to each expert -- to each *slot* when a load
  balancer is active (``maybe_add_info(self.num_slots, token_selected_slots)``) -- and at iteration
  ``stop`` rank 0 writes ``meta_info.json`` (``num_experts`` -- the slot count then --,
  ``num_experts_per_token``) and every rank ``rank{R}.safetensors``: key ``"{iter}_{layer}"`` -> int64
  counts (``ExpertStatistic._set_iter``). ``loads`` sums the ranks (as upstream's
  ``load_expert_statistic`` does, skipping ``*_raw.safetensors``) and folds slots back to experts
  through the assignment in service (the file ``vibe serving init`` wrote).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vibe.engines._common import check_slots
from vibe.engines.errors import EngineError
from vibe.engines.loads import Loads
from vibe.engines.settings import EngineSettings
from vibe.placement import Placement

if TYPE_CHECKING:
    from vibe.placement import Fleet, Result

log = logging.getLogger(__name__)

NAME = "trtllm"
KEY = "trtllm-load-balancer.yaml"
#: The load ConfigMap's ``vibe.dev/loads-source`` for loads read from its statistics.
LOADS_SOURCE = "trtllm-expert-statistic"
#: Round-robin over an expert's replicas: an even split (see the module docstring).
DISPATCH = "even"
#: No per-slot weights: the route kernel deals tokens round-robin over the replicas (module docstring).
REPLICA_WEIGHTS = False
DISPATCH_SOURCE = "tensorrt_llm MoE load balancer: moeComputeRouteKernel (replica = key % replicaCount)"
#: The keys ``MoeLoadBalancerConfig`` accepts (a strict model: any other key is refused).
CONFIG_KEYS = frozenset({"num_slots", "initial_global_assignments", "layer_updates_per_iter"})
#: The route kernels' expert bound.
MAX_EXPERTS = 1024
#: Architectures for which the engine builds a load balancer (``moe_model_arch_list``).
LOAD_BALANCER_ARCHITECTURES = frozenset(
    {
        "DeepseekV3ForCausalLM",
        "MixtralForCausalLM",
        "Llama4ForConditionalGeneration",
        "Qwen2MoeForCausalLM",
        "Qwen3MoeForCausalLM",
    }
)

#: Where each fact comes from: NVIDIA/TensorRT-LLM, file, symbol and the commit of the version read.
UPSTREAM = {
    "config": (
        "tensorrt_llm/llmapi/llm_args.py",
        "MoeLoadBalancerConfig, TorchLlmArgs.validate_load_balancer",
        "fcd3f31682808ae56118ae43c1d7864a3a945e6f",
    ),
    "assert": (
        "tensorrt_llm/_torch/modules/fused_moe/fused_moe_wide_ep.py",
        "WideEPMoE.__init__",
        "99bca89296987c62d28be210a30502bdab8e6a2f",
    ),
    "architectures": (
        "tensorrt_llm/_torch/modules/fused_moe/moe_load_balancer.py",
        "moe_model_arch_list, maybe_create_moe_load_balancer",
        "000a01de66f0eab4ab05640711f0253f50f5209c",
    ),
    "route": (
        "cpp/tensorrt_llm/kernels/moeLoadBalance/moeLoadBalanceKernels.cu",
        "moeComputeRouteDevice, moeComputeRouteKernel",
        "004d78b07b619d40b70758f6f59fd92507848409",
    ),
    "statistics": (
        "tensorrt_llm/_torch/expert_statistic.py",
        "ExpertStatistic._set_iter, ExpertStatistic._maybe_add_info",
        "0fccc5b97dd7b23c438e740b3bf4dcde607266c4",
    ),
    "statistics-reader": (
        "examples/wide_ep/ep_load_balancer/utils.py",
        "load_expert_statistic",
        "7ce477f3c73bffd52edebf6ffbd10d530dff2e6f",
    ),
    "generator": (
        "examples/wide_ep/ep_load_balancer/generate_eplb_config.py",
        "rank-major slots, layer_updates_per_iter",
        "76a646e90c8e863629009ea5d365697da147348f",
    ),
}


# ---------------------------------------------------------------- the file: write, parse, read


def to_yaml(num_slots: int, assignments: dict[int, list[int]]) -> bytes:
    """The load-balancer YAML, deterministic: layers ascending, one flow list per layer."""
    lines = [f"num_slots: {num_slots}", "layer_updates_per_iter: 0", "initial_global_assignments:"]
    lines += [f"  {layer}: [{', '.join(str(e) for e in row)}]" for layer, row in sorted(assignments.items())]
    return ("\n".join(lines) + "\n").encode()


def write(result: Result, fleet: Fleet, baseline: Result | None = None) -> bytes:
    """The load-balancer YAML by MoE-layer ordinal (``fit`` re-keys it past the dense layers)."""
    phy2log = result.placement.phy2log
    header = (
        "# vibe: TensorRT-LLM moe_config.load_balancer. Keys are MoE-layer ordinals; `vibe serving init`"
        " re-keys them by the model's first dense layers (DeepSeek-V3: 3..60).\n"
    )
    body = to_yaml(int(phy2log.shape[1]), {i: row.tolist() for i, row in enumerate(phy2log)})
    return header.encode() + body


def parse(text: str) -> Any:
    """The document from the file's text, as the engine reads it (``yaml.safe_load``), but refusing YAML
    aliases: a hand-edited ConfigMap must not expand into gigabytes. ``ValueError`` when unreadable."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("YAML aliases are not allowed")
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=NoAliases)  # a SafeLoader that refuses aliases
    except yaml.YAMLError as e:
        raise ValueError(f"{KEY} is not YAML: {e}") from None


def _assignments(doc: Any, where: str) -> tuple[int, dict[int, list[int]]]:
    """``(num_slots, {layer: row})`` of a load-balancer document, checked as ``MoeLoadBalancerConfig`` is."""
    if not isinstance(doc, dict):
        raise EngineError(
            "PlacementMismatch", f"{where}: must be a mapping of {', '.join(sorted(CONFIG_KEYS))}"
        )
    extra = sorted(str(k) for k in doc if k not in CONFIG_KEYS)
    if extra:
        raise EngineError(
            "PlacementMismatch", f"{where}: TensorRT-LLM's MoeLoadBalancerConfig refuses the keys {extra}"
        )
    updates = doc.get("layer_updates_per_iter", 0)
    if updates != 0:
        raise EngineError(
            "PlacementMismatch",
            f"{where}: layer_updates_per_iter is {updates!r}; vibe's placement needs 0 (a value > 0 turns on"
            " TensorRT-LLM's online balancer, which would move the experts away from the placement)",
        )
    num_slots = doc.get("num_slots")
    if not isinstance(num_slots, int) or isinstance(num_slots, bool) or num_slots < 1:
        raise EngineError(
            "PlacementMismatch", f"{where}: num_slots must be a positive integer, got {num_slots!r}"
        )
    table = doc.get("initial_global_assignments")
    if not isinstance(table, dict) or not table:
        raise EngineError("PlacementMismatch", f"{where}: no initial_global_assignments")
    out: dict[int, list[int]] = {}
    for layer, row in table.items():
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise EngineError("PlacementMismatch", f"{where}: layer key {layer!r} is not a layer index")
        if not isinstance(row, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in row):
            raise EngineError("PlacementMismatch", f"{where}: layer {layer} must list integer expert ids")
        if len(row) != num_slots:
            raise EngineError(
                "PlacementMismatch",
                f"{where}: layer {layer} lists {len(row)} slots but num_slots is {num_slots}"
                " (TensorRT-LLM raises ValueError)",
            )
        out[layer] = row
    return num_slots, dict(sorted(out.items()))


def read(doc: Any, *, slots_per_gpu: int | None, num_experts: int | None) -> Placement:
    """The placement a load-balancer document holds (its layers in ascending key order)."""
    from vibe.placement import PlacementError

    try:
        num_slots, table = _assignments(doc, KEY)
    except EngineError as e:
        raise PlacementError("InvalidPlacement", e.message) from None
    if slots_per_gpu is None:
        raise PlacementError("InvalidPlacement", f"a {KEY} placement needs the slots per GPU given")
    rows = np.asarray(list(table.values()), dtype=np.int64)
    experts = num_experts if num_experts is not None else int(rows.max()) + 1
    if num_slots % slots_per_gpu:
        raise PlacementError(
            "ShapeMismatch", f"{KEY} has {num_slots} slots, not a multiple of {slots_per_gpu} slots per GPU"
        )
    return Placement(rows, slots_per_gpu, experts)


# ---------------------------------------------------------------- the fit check


def fit(doc: Any, settings: EngineSettings, where: str = KEY) -> dict[str, Any]:
    """The load-balancer document for this engine as launched, or ``EngineError(PlacementMismatch)``.

    Returns:
        ``{"num_slots", "initial_global_assignments", "layer_updates_per_iter": 0}`` with the layers keyed
        by decoder layer index (``first_moe_layer`` + ordinal).
    """
    num_slots, table = _assignments(doc, where)
    if settings.architecture is not None and settings.architecture not in LOAD_BALANCER_ARCHITECTURES:
        log.warning(
            "%s: TensorRT-LLM (at %s) builds its load balancer only for %s; for %s it would ignore the file"
            " unless your release lists it",
            where,
            UPSTREAM["architectures"][2][:12],
            ", ".join(sorted(LOAD_BALANCER_ARCHITECTURES)),
            settings.architecture,
        )
    if num_slots % settings.ep_size:
        raise EngineError(
            "PlacementMismatch",
            f"{where}: num_slots {num_slots} is not divisible by ep_size {settings.ep_size}"
            " (TensorRT-LLM's MoeLoadBalancerConfig.setup raises ValueError)",
        )
    experts = check_slots(num_slots, settings, where, "vibe serving init --redundant-experts")
    if experts > MAX_EXPERTS:
        raise EngineError(
            "PlacementMismatch",
            f"{where}: {experts} experts; TensorRT-LLM's load-balancer route kernels take at most"
            f" {MAX_EXPERTS}",
        )
    if num_slots < experts:  # unreachable after check_slots (redundant >= 0); kept as upstream states it
        raise EngineError(
            "PlacementMismatch", f"{where}: num_slots {num_slots} < num_experts {experts} (WideEPMoE asserts)"
        )
    keys = list(table)
    rows = list(table.values())
    first = settings.first_moe_layer
    if settings.num_layers is None:
        log.warning(
            "%s: engine layer count unknown (no --model-config/--num-layers); keying %d layers from %d",
            where,
            len(rows),
            first,
        )
        wanted = list(range(first, first + len(rows)))
    else:
        wanted = list(range(first, settings.num_layers))
    if keys == wanted:
        out = table
    elif keys == list(range(len(rows))) and len(rows) == len(wanted):
        out = dict(zip(wanted, rows, strict=True))
    else:
        have = set(keys) if keys[0] == first else {k + first for k in keys}
        missing_layers = sorted(set(wanted) - have)
        raise EngineError(
            "PlacementMismatch",
            f"{where}: placement has {len(rows)} layers but the engine has {len(wanted)} MoE layers"
            f" ({wanted[0] if wanted else first}..{wanted[-1] if wanted else first - 1}); TensorRT-LLM"
            " raises KeyError for a missing layer"
            + (f" (first missing: {missing_layers[0]})" if missing_layers else ""),
        )
    for layer, row in out.items():
        bad = sorted({x for x in row if x < 0 or x >= experts})
        if bad:
            raise EngineError(
                "PlacementMismatch",
                f"{where}: layer {layer} names expert {bad[0]}, outside 0..{experts - 1} (WideEPMoE asserts)",
            )
        missing = set(range(experts)).difference(row)
        if missing:
            raise EngineError(
                "PlacementMismatch",
                f"{where}: layer {layer} leaves expert {min(missing)} without a slot (WideEPMoE asserts"
                " every expert in every layer)",
            )
    return {"num_slots": num_slots, "initial_global_assignments": out, "layer_updates_per_iter": 0}


def width(doc: dict[str, Any]) -> int:
    """Physical slots per layer of a fitted document."""
    return int(doc["num_slots"])


def permute(doc: dict[str, Any], perm: list[int]) -> dict[str, Any]:
    """Apply ``perm`` to every layer's slots."""
    table = {layer: [row[p] for p in perm] for layer, row in doc["initial_global_assignments"].items()}
    return {**doc, "initial_global_assignments": table}


def engine_args(load_balancer: Path) -> bytes:
    """The ``extra-engine-args`` snippet that points the engine at the load-balancer file."""
    return (
        "# merge into the engine's extra engine args (trtllm-serve --extra_llm_api_options FILE,"
        " Dynamo --extra-engine-args FILE)\n"
        "moe_config:\n"
        "  backend: WIDEEP\n"
        f"  load_balancer: {json.dumps(str(load_balancer))}\n"
    ).encode()


def engine_args_path(load_balancer: Path) -> Path:
    """Where ``files`` puts the snippet: beside the load-balancer file."""
    return load_balancer.with_name(f"{load_balancer.stem}-extra-engine-args.yaml")


def files(doc: dict[str, Any], path: Path, settings: EngineSettings) -> dict[Path, bytes]:
    """The load-balancer YAML at ``path`` and the engine-args snippet beside it."""
    return {
        path: to_yaml(int(doc["num_slots"]), doc["initial_global_assignments"]),
        engine_args_path(path): engine_args(path),
    }


# ---------------------------------------------------------------- statistics -> loads

_KEY = re.compile(r"^(\d+)_(\d+)$")
_RANK_FILE = re.compile(r"^rank(\d+)\.safetensors$")


def read_statistics(directory: Path) -> tuple[dict[str, Any], dict[tuple[int, int], np.ndarray]]:
    """``(meta_info, {(iter, layer): counts})`` summed over the ranks' files, as upstream reads them."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise EngineError(
            "MissingDependency",
            "reading TensorRT-LLM statistics needs safetensors (pip install 'vibe[trtllm]')",
        ) from None
    if not directory.is_dir():
        raise EngineError("InvalidDump", f"{directory} is not a directory (EXPERT_STATISTIC_PATH)")
    try:
        meta = json.loads((directory / "meta_info.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EngineError(
            "InvalidDump", f"{directory}: cannot read meta_info.json (rank 0 writes it): {e}"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("num_experts"), int):
        raise EngineError("InvalidDump", f"{directory}/meta_info.json has no integer num_experts")
    ranks = sorted(p for p in directory.iterdir() if _RANK_FILE.match(p.name))
    if not ranks:
        raise EngineError("InvalidDump", f"{directory}: no rank<R>.safetensors files")
    width = int(meta["num_experts"])
    total: dict[tuple[int, int], np.ndarray] = {}
    for path in ranks:
        try:
            tensors = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for a bad file
            raise EngineError("InvalidDump", f"cannot read {path}: {e}") from None
        for key, counts in tensors.items():
            m = _KEY.match(key)
            if m is None:
                raise EngineError("InvalidDump", f"{path}: key {key!r} is not '<iter>_<layer>'")
            if counts.ndim != 1 or counts.shape[0] != width or not np.issubdtype(counts.dtype, np.integer):
                raise EngineError(
                    "InvalidDump",
                    f"{path}: {key} holds {counts.dtype} {counts.shape}, expected {width} integer counts"
                    " (meta_info.json num_experts)",
                )
            if counts.min(initial=0) < 0:
                raise EngineError("InvalidDump", f"{path}: {key} holds negative counts")
            at = (int(m.group(1)), int(m.group(2)))
            total[at] = total.get(at, 0) + counts.astype(np.int64)
    return meta, total


def loads(
    path: Path,
    *,
    steps: int | None = None,
    first_moe_layer: int | None = None,
    moe_layers: int | None = None,
    assignment: Path | None = None,
) -> Loads:
    """Tokens per iteration per MoE layer and expert from an ``EXPERT_STATISTIC_PATH`` directory.

    Args:
        steps: iterations to divide by; default: the iterations that recorded any token.
        first_moe_layer, moe_layers: not needed (only MoE layers are recorded, under their decoder
            index); refused, so a wrong value cannot silently shift layers.
        assignment: the load-balancer file the engine runs with (``vibe serving init``'s output): its
            slots fold the per-slot counts back to experts. Without it the counts must be per expert.
    """
    if first_moe_layer is not None or moe_layers is not None:
        raise EngineError(
            "InvalidArgument", "TensorRT-LLM records MoE layers under their own index: drop the layer options"
        )
    if steps is not None and steps < 1:
        raise EngineError("InvalidArgument", f"--steps must be >= 1, got {steps}")
    _, stats = read_statistics(Path(path))
    layers = sorted({layer for _, layer in stats})
    iters = sorted({it for it, _ in stats})
    missing = [(it, layer) for it in iters for layer in layers if (it, layer) not in stats]
    if missing:
        raise EngineError(
            "InvalidDump", f"{path}: iteration {missing[0][0]} has no counts for MoE layer {missing[0][1]}"
        )
    counts = np.stack([np.stack([stats[(it, layer)] for layer in layers]) for it in iters]).astype(np.float64)
    if assignment is not None:
        try:
            num_slots, table = _assignments(
                parse(Path(assignment).read_text(encoding="utf-8")), str(assignment)
            )
        except (OSError, ValueError) as e:
            raise EngineError("InvalidArgument", f"cannot read the assignment {assignment}: {e}") from None
        if num_slots != counts.shape[2]:
            raise EngineError(
                "InvalidDump",
                f"{path}: counts are per {counts.shape[2]} slots but {assignment} has num_slots {num_slots}",
            )
        absent = [layer for layer in layers if layer not in table]
        if absent:
            raise EngineError("InvalidDump", f"{path}: MoE layer {absent[0]} is not in {assignment}")
        experts = max(max(row) for row in table.values()) + 1
        folded = np.zeros((len(iters), len(layers), experts))
        for j, layer in enumerate(layers):
            owner = np.zeros((num_slots, experts))  # slot s holds expert table[layer][s]
            owner[np.arange(num_slots), table[layer]] = 1.0
            folded[:, j, :] = counts[:, j, :] @ owner
        counts = folded
    active = int(np.count_nonzero(counts.reshape(counts.shape[0], -1).sum(axis=1)))
    if active == 0:
        raise EngineError("InvalidDump", f"{path}: no iteration recorded any token (was the engine idle?)")
    passes = steps or active
    total = counts.sum(axis=0)
    empty = np.flatnonzero(total.sum(axis=1) == 0)
    if empty.size:
        raise EngineError("InvalidDump", f"{path}: MoE layer {layers[int(empty[0])]} recorded no tokens")
    return Loads(total / passes, passes, layers[0])
