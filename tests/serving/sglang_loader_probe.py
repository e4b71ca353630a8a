"""Run the pinned SGLang's own loader on a vibe ``--init-expert-location`` file; print what it built.

A subprocess of ``test_serving_sglang_loader.py`` (SGLang configures logging and imports every model
module on first use: kept out of the pytest process). It does what an SGLang server does at start, on CPU:
``ServerArgs`` from the launch flags the docs give (``--init-expert-location FILE``, DeepEP, static
dispatch), published into SGLang's runtime context; ``ModelConfig`` from the model's ``config.json``
(SGLang resolves the architecture through its ``ModelRegistry`` and calls the model class's
``get_model_config_for_expert_location``); then ``compute_initial_expert_location_metadata``, which reads
the file and calls ``ExpertLocationMetadata.init_by_mapping`` for each EP rank asked for.

Usage: python sglang_loader_probe.py MODEL_DIR FILE EP_SIZE REDUNDANT NNODES RANK[,RANK...]
Prints one JSON object: ``{"metadata": null}`` when SGLang ignored the file, else the maps.
"""

from __future__ import annotations

import json
import sys


def main(model_dir: str, path: str, ep_size: int, redundant: int, nnodes: int, ranks: list[int]) -> dict:
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.eplb.expert_location import compute_initial_expert_location_metadata
    from sglang.srt.runtime_context import get_context
    from sglang.srt.server_args import ServerArgs

    args = ServerArgs(
        model_path=model_dir,
        tp_size=ep_size,
        ep_size=ep_size,
        nnodes=nnodes,
        ep_num_redundant_experts=redundant,
        init_expert_location=path,
        moe_a2a_backend="deepep",
        ep_dispatch_algorithm="static",
        device="cpu",
        skip_tokenizer_init=True,
    )
    get_context().set_server_args(args)
    model_config = ModelConfig.from_server_args(args)
    out: dict = {"ranks": {}}
    for rank in ranks:
        meta = compute_initial_expert_location_metadata(model_config, moe_ep_rank=rank)
        if meta is None:
            return {"metadata": None}
        out["metadata"] = {
            "ep_size": meta.ep_size,
            "num_layers": meta.num_layers,
            "num_physical_experts": meta.num_physical_experts,
            "num_logical_experts": meta.num_logical_experts,
            "physical_to_logical_map": meta.physical_to_logical_map_cpu.tolist(),
        }
        out["ranks"][str(rank)] = meta.logical_to_rank_dispatch_physical_map.tolist()
    return out


if __name__ == "__main__":
    model_dir, path, ep, red, nodes, ranks = sys.argv[1:7]
    result = main(model_dir, path, int(ep), int(red), int(nodes), [int(r) for r in ranks.split(",")])
    sys.stdout.write("\n" + json.dumps(result) + "\n")
