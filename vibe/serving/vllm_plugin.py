"""vLLM plugin (entry point ``vllm.general_plugins`` ``vibe``): vibe's placement as vLLM's EPLB policy.

vLLM loads every ``vllm.general_plugins`` entry point in each of its processes
(``vllm.plugins.load_general_plugins``) and runs it. ``register`` does nothing unless
``VIBE_VLLM_PLACEMENT_DIR`` names the mounted ``<name>-placement`` ConfigMap; then it checks that this
is a vLLM release the plugin was tested with (``vllm_eplb.VLLM_VERSIONS``; any other stops vLLM with one
error) and installs ``VibeEplbPolicy`` in ``vllm.distributed.eplb.policy.EPLB_POLICIES``:

* under ``"vibe"``, and
* under ``"default"``: vLLM 0.33.0 types ``--eplb-config``'s ``policy`` as ``Literal["default"]`` (its
  pydantic config refuses any other name, and async EPLB insists on ``"default"``), and ``EplbState``
  looks the class up by that name when it adds the model. So with the plugin on, ``--enable-eplb``
  alone makes vLLM ask vibe; vLLM's own class stays the fallback.

``VibeEplbPolicy.rebalance_experts`` runs on every EP rank at the same rebalance, inside vLLM's
collective rearrangement (sync mode: the main thread; async mode: each rank's EPLB worker thread, where
vLLM itself all-reduces over the EPLB group right after). It reads this rank's view, gathers every
rank's view over vLLM's EPLB CPU process group (``get_eplb_group().cpu_group``, gloo), and returns what
``vllm_eplb.choose`` decides from the gathered list, so every rank returns the same map. The load window
vLLM passed is written by EP rank 0 (``VIBE_VLLM_LOADS_FILE``) for ``vibe serving export-loads --engine
vllm`` to ship as vibe's loads.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from vibe.serving import state, vllm_eplb

log = logging.getLogger("vibe.vllm")


class Runtime:
    """The policy's state in one vLLM worker process (shared by every rebalance in it).

    Args:
        mount: the mounted placement ConfigMap.
        loads_file: where rank 0 writes the load window (None: not written).
        gather: ``View -> list[View]`` over every EP rank, in rank order (default: vLLM's EPLB group).
        rank: this process's EP rank (default: from the same group).
        default: the policy to fall back to (default: vLLM's ``DefaultEplbPolicy``).
    """

    def __init__(
        self,
        mount: str,
        loads_file: str | None = None,
        gather: Any = None,
        rank: Any = None,
        default: Any = None,
    ) -> None:
        self.mount, self.loads_file = mount, loads_file
        self._gather = gather or _gather_over_eplb_group
        self._rank = rank or _eplb_rank
        self._default = default
        self.applied: state.Applied | None = None  # the vibe map vLLM runs, as the sidecar records one
        self._vibe_map: Any = None
        self._said = ""
        self._lock = threading.Lock()

    def say(self, decision: vllm_eplb.Decision) -> None:
        """One log line per change of decision, on EP rank 0 (not one per rebalance)."""
        line = f"{decision.action.value}: {decision.why}"
        if line != self._said:
            self._said = line
            if self._rank() == 0:
                level = logging.INFO if decision.action is vllm_eplb.Action.APPLY else logging.WARNING
                log.log(level, "vibe EPLB policy: %s", decision.why)

    def rebalance(
        self,
        weight: Any,
        num_replicas: int,
        num_groups: int,
        num_nodes: int,
        num_ranks: int,
        old: Any = None,
    ) -> Any:
        import torch

        with self._lock:
            request = vllm_eplb.Request(int(weight.shape[0]), int(weight.shape[1]), num_replicas, num_ranks)
            self._write_loads(weight)
            try:
                view, arr = vllm_eplb.read_view(self.mount, request)
            except Exception as e:  # a rank that skipped the gather would hang every other rank in it
                view, arr = vllm_eplb.View(None, "", f"InternalError: {type(e).__name__}: {e}"), None
            views = self._gather(view)
            decision = vllm_eplb.choose(views, self.applied)
            self.say(decision)
            if decision.action is vllm_eplb.Action.APPLY:
                assert arr is not None  # every rank's view fits, this one's included
                self.applied, self._vibe_map = decision.applied, torch.from_numpy(arr)
                return self._vibe_map.clone()
            if decision.action is vllm_eplb.Action.KEEP:
                # vibe's map in service, which every rank holds (it was applied only when all agreed).
                # Not ``old``: vLLM's profile run (``rearrange(is_profile=True)`` at start) asks the
                # policy but commits nothing, so vLLM may still run its initial map after vibe "applied"
                # one; returning vibe's map again makes the next real rebalance move to it (no copy
                # at all when it is already in place).
                shape = (request.num_layers, num_replicas)
                if self._vibe_map is not None and tuple(self._vibe_map.shape) == shape:
                    return self._vibe_map.clone()
                if old is not None and tuple(old.shape) == shape:
                    return old.clone()
            self.applied, self._vibe_map = None, None
            return self._default_policy().rebalance_experts(
                weight, num_replicas, num_groups, num_nodes, num_ranks, old
            )

    def _default_policy(self) -> Any:
        if self._default is None:
            from vllm.distributed.eplb.policy.default import DefaultEplbPolicy

            self._default = DefaultEplbPolicy
        return self._default

    def _write_loads(self, weight: Any) -> None:
        if not self.loads_file or self._rank() != 0:
            return
        try:
            doc = vllm_eplb.window(weight.double().numpy(), vllm_eplb.window_size(_configured_window()))
            if doc is not None:
                vllm_eplb.write_window(self.loads_file, doc)
        except Exception as e:  # never stop a rebalance (or skip its collective) for the statistics
            log.warning("vibe EPLB policy: could not write the load window to %s: %s", self.loads_file, e)


def _gather_over_eplb_group(view: vllm_eplb.View) -> list[vllm_eplb.View]:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return [view]
    from vllm.distributed.parallel_state import get_eplb_group

    group = get_eplb_group().cpu_group
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, view, group=group)
    return [v for v in out]


def _eplb_rank() -> int:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return 0
    from vllm.distributed.parallel_state import get_eplb_group

    return int(get_eplb_group().rank_in_group)


def _configured_window() -> int | None:
    try:
        from vllm.config import get_current_vllm_config_or_none

        config = get_current_vllm_config_or_none()
    except ImportError:
        return None
    return None if config is None else int(config.parallel_config.eplb_config.window_size)


def check_version(version: str) -> None:
    """Refuse a vLLM release the plugin was not tested with (one error, naming both)."""
    if version not in vllm_eplb.VLLM_VERSIONS:
        tested = ", ".join(vllm_eplb.VLLM_VERSIONS)
        raise RuntimeError(
            f"vibe's vLLM EPLB plugin is tested with vLLM {tested}, not {version}:"
            f" EPLB's policy interface and call site change between releases. Install a tested vLLM, or"
            f" unset {vllm_eplb.ENV_PLACEMENT_DIR} to run without vibe's placement"
        )


RUNTIME: Runtime | None = None


def register() -> None:
    """The ``vllm.general_plugins`` entry point (idempotent: vLLM may call it more than once)."""
    global RUNTIME
    mount = os.environ.get(vllm_eplb.ENV_PLACEMENT_DIR, "").strip()
    if not mount:
        log.debug("vibe EPLB policy off: %s is not set", vllm_eplb.ENV_PLACEMENT_DIR)
        return
    import vllm
    from vllm.distributed.eplb import policy as eplb_policy

    check_version(vllm.__version__)
    original = eplb_policy.EPLB_POLICIES.get("default")
    if getattr(original, "vibe_runtime", None) is not None:
        return  # already registered in this process
    RUNTIME = Runtime(mount, os.environ.get(vllm_eplb.ENV_LOADS_FILE) or None, default=original)
    runtime = RUNTIME

    class VibeEplbPolicy(eplb_policy.AbstractEplbPolicy):
        """vibe's placement from the mounted ConfigMap (``vibe.serving.vllm_plugin``)."""

        vibe_runtime = runtime

        @classmethod
        def rebalance_experts(
            cls,
            weight: Any,
            num_replicas: int,
            num_groups: int,
            num_nodes: int,
            num_ranks: int,
            old_global_expert_indices: Any = None,
        ) -> Any:
            return runtime.rebalance(
                weight, num_replicas, num_groups, num_nodes, num_ranks, old_global_expert_indices
            )

    eplb_policy.EPLB_POLICIES["vibe"] = VibeEplbPolicy
    eplb_policy.EPLB_POLICIES["default"] = VibeEplbPolicy
    log.info(
        "vibe EPLB policy registered (vLLM %s): placement from %s, load window to %s",
        vllm.__version__,
        mount,
        runtime.loads_file or "nowhere",
    )
