"""Drive the pinned vLLM's own EPLB code path with vibe's plugin, on CPU; print what it did.

A subprocess of ``test_serving_vllm_plugin.py``, run with the vLLM virtualenv's Python (``.venv-vllm``:
vLLM's torch pin differs from the agent's). Modes:

``plugins``: with ``VIBE_VLLM_PLACEMENT_DIR`` set (or not), run ``vllm.plugins.load_general_plugins()``
    and print which EPLB policies vLLM then has; also whether vLLM's config accepts ``policy: vibe``.
``version VERSION``: pretend vLLM is VERSION and load the plugins; print the error.
``rearrange SCENARIO.json OUT_DIR``: two EP ranks (two processes, gloo, as vLLM's
    ``init_distributed_environment`` / ``initialize_model_parallel`` set them up) load the plugins through
    vLLM's loader, build a real ``EplbState`` with ``add_model`` for a small MoE model whose expert
    weights are CPU tensors (each slot's weight holds the id of the logical expert in it), and for each
    phase of the scenario: swap each rank's mounted placement volume (kubelet's atomic ``..data`` swap),
    fill the load window, and call ``EplbState.rearrange()`` (``is_profile=True`` for a phase marked
    ``profile``: vLLM's profile run at start, which asks the policy but commits nothing) -- which
    all-reduces the window, calls the
    registered policy's ``rebalance_experts`` on every rank, moves the expert weights between the ranks
    (vLLM's ``torch_gloo`` communicator) and commits the maps. Each rank writes, per phase, the map it
    then serves, whether every local slot's weight is the expert that map names, and the vibe log lines.

What is not vLLM's code here: the model object (vLLM's ``MixtureOfExperts`` protocol over plain tensors),
and three CUDA-only calls that have no CPU form in this wheel -- ``torch.Event`` timing of the
rearrangement (a no-op timer), ``torch.accelerator.current_stream().synchronize()`` (nothing to wait
for on CPU) and pinned staging buffers (``PIN_MEMORY`` off). vLLM's ``ParallelConfig`` refuses
``enable_eplb`` on a platform other than CUDA/ROCm/XPU, so the flag is set after validation.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _cpu_shims() -> None:
    import torch

    class _Event:
        def __init__(self, enable_timing: bool = False) -> None:
            pass

        def record(self, *args: object) -> None:
            pass

        def synchronize(self) -> None:
            pass

        def elapsed_time(self, other: object) -> float:
            return 0.0

    class _Stream:
        def synchronize(self) -> None:
            pass

    torch.Event = _Event  # type: ignore[misc,assignment]
    torch.accelerator.current_stream = lambda *a, **k: _Stream()  # type: ignore[assignment]
    import vllm.distributed.eplb.eplb_communicator as communicator
    import vllm.distributed.eplb.eplb_state as eplb_state

    communicator.PIN_MEMORY = eplb_state.PIN_MEMORY = False


def plugins() -> dict:
    import vllm.plugins
    from pydantic import ValidationError
    from vllm.config.parallel import EPLBConfig
    from vllm.distributed.eplb.policy import EPLB_POLICIES

    vllm.plugins.load_general_plugins()
    try:
        EPLBConfig(policy="vibe", use_async=False)
        accepts = True
    except ValidationError:
        accepts = False
    return {
        "vllm": vllm.__version__,
        "policies": {name: cls.__name__ for name, cls in sorted(EPLB_POLICIES.items())},
        "config_accepts_policy_vibe": accepts,
    }


def version(pretend: str) -> dict:
    import vllm
    import vllm.plugins

    vllm.__version__ = pretend
    try:
        vllm.plugins.load_general_plugins()
    except RuntimeError as e:
        return {"error": str(e)}
    return {"error": None}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _worker(rank: int, world: int, port: int, scenario: dict, out_dir: str) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from serving_helpers import KubeletVolume

    mounts = Path(out_dir) / f"mount-rank{rank}"
    volume = KubeletVolume(mounts)
    volume.write(scenario["phases"][0]["data"][rank])
    os.environ["VIBE_VLLM_PLACEMENT_DIR"] = str(mounts)
    os.environ["VIBE_VLLM_LOADS_FILE"] = str(Path(out_dir) / "loads" / "window.json")
    os.environ["VLLM_HOST_IP"] = "127.0.0.1"
    lines = _Lines()
    logging.getLogger("vibe.vllm").addHandler(lines)
    logging.getLogger("vibe.vllm").setLevel(logging.INFO)

    import vllm.plugins
    from vllm.config import DeviceConfig, ParallelConfig, VllmConfig, set_current_vllm_config
    from vllm.config.parallel import EPLBConfig
    from vllm.distributed import parallel_state

    _cpu_shims()
    layers, experts, redundant = scenario["layers"], scenario["experts"], scenario["redundant"]
    physical = experts + redundant
    local = physical // world
    eplb = EPLBConfig(
        use_async=False, communicator="torch_gloo", window_size=scenario["window"], step_interval=10
    )
    config = VllmConfig(
        parallel_config=ParallelConfig(
            tensor_parallel_size=world, enable_expert_parallel=True, eplb_config=eplb
        ),
        device_config=DeviceConfig(device="cpu"),
    )
    parallel = config.parallel_config
    parallel.enable_eplb = True  # refused on CPU by validation; the code path below does not care
    parallel.eplb_config.num_redundant_experts = redundant
    with set_current_vllm_config(config):
        vllm.plugins.load_general_plugins()  # what every vLLM worker process does at start
        parallel_state.init_distributed_environment(
            world, rank, f"tcp://127.0.0.1:{port}", rank, backend="gloo"
        )
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=world, backend="gloo")
        from vllm.distributed.eplb.eplb_state import EplbState

        class Layer:
            def __init__(self) -> None:
                self.weight = torch.full((local, 4), -1.0)

            def get_expert_weights(self) -> list:
                return [self.weight]

            def set_eplb_state(self, **kwargs: object) -> None:
                pass

        class Model:  # vLLM's MixtureOfExperts protocol
            num_moe_layers = layers
            num_expert_groups = 1
            num_logical_experts = experts
            num_physical_experts = physical
            num_local_physical_experts = local
            num_routed_experts = experts
            num_shared_experts = 0
            num_redundant_experts = redundant

            def __init__(self) -> None:
                self.moe_layers = [Layer() for _ in range(layers)]
                self.expert_weights: list = []

            def set_eplb_state(self, load_view: object, l2p: object, count: object) -> None:
                self.expert_weights = [layer.get_expert_weights() for layer in self.moe_layers]

            def update_physical_experts_metadata(self, physical: int, local: int) -> None:
                pass

        class ModelConfig:
            model = "tiny-moe"

            def compute_hash(self) -> str:
                return "tiny-moe"

        state = EplbState(parallel, torch.device("cpu"))
        model = Model()
        state.add_model(model, ModelConfig())  # type: ignore[arg-type]
        model_state = next(iter(state.model_states.values()))
        start = model_state.physical_to_logical_map
        for layer, moe in enumerate(model.moe_layers):  # each slot holds the expert the map names
            for j in range(local):
                moe.weight[j] = float(start[layer, rank * local + j])
        results = []
        for phase in scenario["phases"]:
            if phase["data"][rank] is not None:
                volume.write(phase["data"][rank])
            torch.distributed.barrier()
            # per-physical-slot counts of this rank, [window, layers, physical]
            window = torch.tensor(phase["window_counts"][rank], dtype=torch.int32)
            model_state.expert_load_window.copy_(window)
            lines.lines.clear()
            before = model_state.physical_to_logical_map.clone()
            state.rearrange(is_profile=bool(phase.get("profile")))  # profile: what vLLM's start does
            from vllm.distributed.eplb.policy.default import DefaultEplbPolicy

            default = DefaultEplbPolicy.rebalance_experts(
                model_state.last_expert_load.cpu(), physical, 1, 1, world, before
            )
            current = model_state.physical_to_logical_map.tolist()
            held = [[int(moe.weight[j, 0]) for j in range(local)] for moe in model.moe_layers]
            want = [[row[rank * local + j] for j in range(local)] for row in current]
            results.append(
                {
                    "name": phase["name"],
                    "policy": state.policy.__name__,
                    "map": current,
                    "weights_follow_map": held == want,
                    "log": list(lines.lines),
                    "default_answer": default.tolist(),
                }
            )
            torch.distributed.barrier()
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(results))


def rearrange(scenario_path: str, out_dir: str) -> dict:
    import socket

    import torch.multiprocessing as mp

    scenario = json.loads(Path(scenario_path).read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world = scenario["ranks"]
    mp.spawn(_worker, args=(world, port, scenario, out_dir), nprocs=world)
    ranks = [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in range(world)]
    loads_file = Path(out_dir) / "loads" / "window.json"
    return {"ranks": ranks, "window": json.loads(loads_file.read_text()) if loads_file.exists() else None}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "plugins":
        result = plugins()
    elif mode == "version":
        result = version(sys.argv[2])
    elif mode == "rearrange":
        result = rearrange(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {mode}")
    sys.stdout.write("\n" + json.dumps(result) + "\n")
