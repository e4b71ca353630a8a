"""Helpers for the serving tests: a small placement ConfigMap, a kubelet-like volume writer, and the
``--flag=value`` reader the examples' tests share.

The small model: 8 routed experts, 3 MoE layers after 1 dense layer (engine counts 4 layers), 4 GPUs
with 3 slots each = 12 physical slots, so 4 redundant experts.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from vibe import contract
from vibe.engines import ENGINES, EngineSettings, trtllm

E, G, S, L = 8, 4, 3, 3
P = G * S


def phy2log(shift: int = 0) -> list[list[int]]:
    """[L][P]: every expert once, then experts 0..3 again, rotated by ``shift`` per layer."""
    rows = []
    for layer in range(L):
        base = [(e + shift + layer) % E for e in range(E)]
        rows.append(base + base[: P - E])
    return rows


def placement_data(
    generation: int = 1, shift: int = 0, meta: bool = True, gpus: int = G, uid: str | None = None
) -> dict[str, str]:
    """ConfigMap data as the operator writes it (keys per vibe.engines, plus placement-meta.json)."""
    p2l = phy2log(shift)
    placement = {
        "gpus": [{"node": f"n{g // 2}", "uuid": f"GPU-{g}"} for g in range(gpus)],
        "layers": [{"physicalToLogical": row} for row in p2l],
    }
    logcnt = [[row.count(e) for e in range(E)] for row in p2l]
    width = max(max(c) for c in logcnt)
    log2phy = [
        [[p for p, x in enumerate(row) if x == e] + [-1] * (width - row.count(e)) for e in range(E)]
        for row in p2l
    ]
    data = {
        ENGINES["vibe"].key: json.dumps(placement, sort_keys=True),
        ENGINES["sglang"].key: json.dumps({"physical_to_logical_map": p2l}),
        ENGINES["eplb"].key: json.dumps({"phy2log": p2l, "log2phy": log2phy, "logcnt": logcnt}),
        ENGINES["trtllm"].key: trtllm.to_yaml(P, dict(enumerate(p2l))).decode(),
        ENGINES["vllm"].key: json.dumps({"physical_to_logical_map": p2l}),
    }
    if meta:
        stamp = {"contentHash": contract.content_hash(data), "placementGeneration": generation}
        data[contract.KEY_META] = json.dumps({**stamp, **({"uid": uid} if uid else {})})
    return data


def settings(**kw) -> EngineSettings:
    base = {
        "ep_size": G,
        "redundant_experts": P - E,
        "num_experts": E,
        "num_layers": L + 1,
        "first_moe_layer": 1,
    }
    base.update(kw)
    return EngineSettings(**base)


def flags(command: list[str]) -> dict[str, str]:
    """``--flag[=value]`` arguments of a container command line -> value ("" for a bare flag)."""
    out = {}
    for arg in command:
        if arg.startswith("--"):
            key, _, value = arg.partition("=")
            out[key] = value
    return out


class KubeletVolume:
    """Writes a directory the way kubelet's atomic writer projects a ConfigMap volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def write(self, data: dict[str, str], remove_old: bool = True) -> str:
        self._n += 1
        version = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{self._n:09d}"
        vdir = self.root / version
        vdir.mkdir()
        for k, v in data.items():
            (vdir / k).write_text(v, encoding="utf-8")
        old = None
        link = self.root / "..data"
        if link.is_symlink():
            old = os.readlink(link)
        tmp = self.root / "..data_tmp"
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(version, tmp)
        os.rename(tmp, link)  # the atomic swap
        for k in data:
            user = self.root / k
            if not user.is_symlink():
                os.symlink(f"..data/{k}", user)
        for entry in os.listdir(self.root):
            if not entry.startswith("..") and entry not in data:
                (self.root / entry).unlink()
        if old and remove_old:
            shutil.rmtree(self.root / old)
        return version
