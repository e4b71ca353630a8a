"""Every modelling constant of the simulator, with its value, unit and source.

Role: one table that ``--output`` writes under ``constants`` and docs/serving.md prints, so that no number
in a simulated result is hidden. Measured values point at the committed data file they come from;
datasheet and public figures name their source; assumptions say so. None was tuned to hit a reported
figure (benchmarks/results/serving.md, item 4).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Constant:
    value: float
    unit: str
    source: str


#: name -> Constant. ``costs`` and ``engine`` read these; the CLI may override a few (their flags say so).
CONSTANTS: dict[str, Constant] = {
    "nvlink_bytes_per_s": Constant(
        155e9,
        "B/s per GPU",
        "DeepEP README, normal kernels intranode EP8 on H800: 153 GB/s dispatch, 158 GB/s combine (NVLink)",
    ),
    "rdma_bytes_per_s": Constant(
        50e9,
        "B/s per GPU",
        "DeepEP README, normal kernels internode EP16-64: 43-58 GB/s (one 400 Gb/s CX7 NIC per GPU, "
        "~50 GB/s line rate)",
    ),
    "comm_latency_s": Constant(
        10e-6,
        "s per dispatch or combine",
        "assumption: fixed cost of one all-to-all phase beside its bytes (DeepEP's low-latency kernels move "
        "128 tokens x 8 experts in 77 us at EP8, i.e. bandwidth-bound; not measured here)",
    ),
    "gpus_per_node": Constant(8, "GPUs", "HGX H100/H200 nodes: 8 GPUs on NVLink, RDMA between nodes"),
    "dispatch_bytes_fp8": Constant(
        1.0, "B per hidden element", "DeepEP: fp8 dispatch (with per-128 scales, ignored), bf16 combine"
    ),
    "combine_bytes": Constant(2.0, "B per hidden element", "DeepEP: bf16 combine"),
    "gpu_memory_h100_bytes": Constant(80 * 2**30, "B", "H100 SXM datasheet: 80 GB HBM3"),
    "gpu_memory_h200_bytes": Constant(
        143771 * 2**20, "B", "nvidia-smi on the measured H200: 143771 MiB (gpu-h200-2026-12-01/gpu.txt)"
    ),
    "mem_fraction_static": Constant(
        0.88,
        "of GPU memory",
        "SGLang --mem-fraction-static default for large GPUs (weights + KV cache; the rest is activations)",
    ),
    "kv_bytes_per_element": Constant(2, "B", "SGLang's default KV cache dtype follows the model (bf16)"),
    "h200_over_h100_bandwidth": Constant(
        4.8 / 3.35,
        "ratio",
        "datasheets: H200 4.8 TB/s HBM3e, H100 3.35 TB/s HBM3; scales the measured H200 decode attention "
        "(memory-bound) to an H100",
    ),
    "mla_decode_bytes_per_s": Constant(
        0.0,
        "B/s",
        "derived at load: the KV bandwidth the GQA decode attention points reach on the measured GPU "
        "(SDPA, flash kernel). DeepSeek-V3's MLA decode is priced at it (a FlashMLA-class kernel) instead "
        "of the torch bmm emulation measured beside it, which reads the cache 4-5x slower",
    ),
    "step_overhead_s": Constant(
        0.0,
        "s per step",
        "assumption: SGLang's overlap scheduler hides the CPU's batch scheduling behind the GPU step",
    ),
    "kv_transfer_bytes_per_s": Constant(
        50e9,
        "B/s per request",
        "PD disaggregation: a finished prefill's KV cache moves to the decode group over RDMA at one "
        "NIC's rate (as rdma_bytes_per_s); SGLang overlaps it with decoding",
    ),
    "restart_s": Constant(
        180.0,
        "s",
        "assumption: a serving group restart (load ~700 GB of DeepSeek-V3 fp8 weights from local NVMe at "
        "~5 GB/s per node, capture CUDA graphs); pass --restart-s with your own figure",
    ),
    "weight_copy_bytes_per_s": Constant(
        50e9,
        "B/s per GPU",
        "--replace-cost moves: each GPU receives its new experts' weights over RDMA at one NIC's rate "
        "(as rdma_bytes_per_s); serving pauses meanwhile (SGLang's EPLB rebalance pauses the engine)",
    ),
    "floor_slowdown_share": Constant(
        0.0,
        "of a GPU's compute slowdown",
        "measured (benchmarks/results/gpu-slowness-h100-2026-12-07/): on an H100 at its 700 W cap, "
        "floor-bound expert GEMMs run at the top SM clock (1980 MHz) drawing 475-660 W (DeepSeek-V3 bf16 "
        "to 32 tokens/expert, fp8 to 128; Qwen3 bf16 to 128, fp8 to 512), and only above them the cap "
        "pulls the clock down (1310-1565 MHz at 8192); a 60 s soak at 68 C moved nothing. A GPU slowed "
        "by its power cap is slowed in the compute region and not at the floor (that README's default: "
        "floor factor 1.0, compute factor s): synthetic fleets' slow GPUs keep their floor (0). Heat-like "
        "slowness (clock held low at any load, not measured) is nearer 1, the 'uniform' model; "
        "--floor-share",
    ),
    "two_batch_overlap": Constant(
        1.0,
        "1 = on when the group spans nodes",
        "SGLang's large-scale DeepSeek-V3 deployment (LMSYS blog 2025-05-05, 96 H100, PD + EP) runs "
        "--enable-two-batch-overlap in prefill and decode: two micro-batches, one's DeepEP dispatch/"
        "combine behind the other's compute (reported +27-35 % prefill throughput); within one node "
        "(NVLink only) engines run without it (--overlap auto|on|off)",
    ),
    "dispatch_per_node": Constant(
        1.0,
        "1 = prefill steps (DeepEP --deepep-mode auto)",
        "SGLang --deepep-mode auto, as in the same deployment: prefill steps use DeepEP's normal kernels "
        "(a token sent once per destination node over RDMA, forwarded over NVLink inside it), decode "
        "steps the low-latency kernels (one RDMA copy per token-expert pair) (--dispatch auto|always|never)",
    ),
    "routing_samples": Constant(
        16,
        "samples",
        "independent routing draws per token count in each policy's expert-time table (per-step noise)",
    ),
}


def as_json(overrides: dict[str, float] | None = None) -> dict[str, dict[str, object]]:
    """``{name: {"value", "unit", "source"}}`` with any values the run overrode."""
    out: dict[str, dict[str, object]] = {}
    for name, c in sorted(CONSTANTS.items()):
        value = (overrides or {}).get(name, c.value)
        source = c.source if value == c.value else f"set for this run (default {c.value:g}: {c.source})"
        out[name] = {"value": value, "unit": c.unit, "source": source}
    return out


def value(name: str) -> float:
    return CONSTANTS[name].value
