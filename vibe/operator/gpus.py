"""Which GPUs a MoEDeployment runs on, in rank order, and the curve each one is priced with.

Role: between the watch caches (Kopf indices of Nodes, Pods and GPUProfiles, holding the snapshots
defined here) and the placement engine's ``Fleet``. Pure: the reconciler hands in the snapshots.

Rank order (the order SGLang and EPLB number expert-parallel ranks in):

* ``nodeSelector``: matching nodes sorted by name, each node's GPUs by index, the first ``count``.
* ``podSelector``: matching running pods sorted by (LeaderWorkerSet group index, worker index) or, for a
  StatefulSet, the pod ordinal; each pod's GPUs are those the kubelet assigned it, as the agent read them
  from the pod-resources API (GPUProfile ``spec.pods``), in index order. A pod the agent did not report
  (pod-resources off, or not read yet) takes the next ``gpusPerPod`` GPUs of its node not held by
  another pod, and the Ready message says so: that rule guesses the device plugin's assignment.

Curves: the GPU's curve for the model's expert shape (hidden, intermediate, dtype) when measured, else
its closest measured shape scaled with ``vibe.placement``'s reference scaling (``curve_source="scaled"``,
which the Ready message mentions).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vibe.api import (
    GROVE_LABEL_PCLQ,
    GROVE_LABEL_PCLQ_POD_INDEX,
    GROVE_LABEL_PCSG_REPLICA,
    GROVE_LEADER_SUFFIX,
    GROVE_WORKER_SUFFIX,
    LWS_LABEL_GROUP_INDEX,
    LWS_LABEL_WORKER_INDEX,
    STS_LABEL_POD_INDEX,
)
from vibe.operator.clock import parse_time
from vibe.operator.problems import Problem
from vibe.operator.spec import DeploymentSpec, fingerprint
from vibe.placement.curves import DTYPE_BYTES, Fleet, GPUCurve, scale_curve
from vibe.placement.errors import PlacementError


@dataclass(frozen=True, eq=False)
class Curve:
    """One measured curve of a GPU: seconds for ONE expert of a shape over n tokens."""

    hidden_size: int
    intermediate_size: int
    dtype: str
    tokens: np.ndarray
    seconds: np.ndarray

    @property
    def shape(self) -> tuple[int, int, str]:
        return (self.hidden_size, self.intermediate_size, self.dtype)


@dataclass(frozen=True, eq=False)
class ProfileGPU:
    index: int
    uuid: str
    product: str
    memory_bytes: int | None
    curves: tuple[Curve, ...]


@dataclass(frozen=True, eq=False)
class ProfileSnapshot:
    """What the operator keeps of one GPUProfile (one node)."""

    node: str
    gpus: tuple[ProfileGPU, ...]  # by index
    source: str
    heartbeat: dt.datetime | None
    pods: Mapping[tuple[str, str], tuple[str, ...]] | None = None  # (ns, pod) -> GPU UUIDs, when reported

    def stale(self, now: dt.datetime, ttl_s: float) -> bool:
        return self.heartbeat is not None and (now - self.heartbeat).total_seconds() > ttl_s


@dataclass(frozen=True)
class PodSnapshot:
    """What the operator keeps of one pod: enough to match selectors and rank it."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    node: str
    rank: tuple[int, int, str]


@dataclass(frozen=True)
class GPURef:
    node: str
    index: int
    uuid: str

    @property
    def id(self) -> str:
        return f"{self.node}/{self.index}"


@dataclass(frozen=True, eq=False)
class Resolution:
    """The GPUs of one MoEDeployment and their fleet curves, in rank order."""

    gpus: tuple[GPURef, ...]
    fleet: Fleet
    curve_source: str  # measured | scaled
    stale_nodes: tuple[str, ...]
    notes: tuple[str, ...]
    stale_at: dt.datetime | None = None  # when the first fresh profile in use turns stale

    @property
    def nodes(self) -> list[str]:
        return sorted({g.node for g in self.gpus})

    @property
    def gpus_key(self) -> str:
        """Fingerprint of the GPU identities in rank order (a change means a topology change)."""
        return fingerprint([[g.node, g.index, g.uuid] for g in self.gpus])

    @property
    def curves_key(self) -> str:
        """Fingerprint of the curves the fleet is priced with."""
        return fingerprint([[g.tokens, g.seconds] for g in self.fleet.gpus])


# --------------------------------------------------------------------------------------------------
# Snapshots (built by the index handlers from watch events)


def profile_snapshot(body: Mapping[str, Any]) -> ProfileSnapshot:
    """A GPUProfile object as a snapshot; malformed GPUs/curves are dropped (the CRD refuses most)."""
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    gpus: list[ProfileGPU] = []
    for g in spec.get("gpus") or ():
        curves = []
        for c in g.get("curves") or ():
            try:
                curves.append(
                    Curve(
                        hidden_size=int(c["hiddenSize"]),
                        intermediate_size=int(c["intermediateSize"]),
                        dtype=str(c["dtype"]),
                        tokens=np.asarray(c["tokens"], dtype=np.float64),
                        seconds=np.asarray(c["seconds"], dtype=np.float64),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue
        gpus.append(
            ProfileGPU(
                index=int(g.get("index", len(gpus))),
                uuid=str(g.get("uuid") or ""),
                product=str(g.get("product") or ""),
                memory_bytes=_memory_bytes(g),
                curves=tuple(curves),
            )
        )
    pods = None
    if isinstance(spec.get("pods"), list):
        pods = {
            (str(p.get("namespace") or ""), str(p.get("name") or "")): tuple(
                str(u) for u in p.get("gpus") or ()
            )
            for p in spec["pods"]
            if isinstance(p, Mapping)
        }
    return ProfileSnapshot(
        pods=pods,
        node=str(spec.get("nodeName") or body.get("metadata", {}).get("name", "")),
        gpus=tuple(sorted(gpus, key=lambda x: x.index)),
        source=str(spec.get("source") or "measured"),
        heartbeat=parse_time(status.get("heartbeatTime")),
    )


def pod_snapshot(body: Mapping[str, Any]) -> PodSnapshot | None:
    """A scheduled, live pod as a snapshot; None for pods that cannot serve (unscheduled, finished)."""
    meta = body.get("metadata") or {}
    node = (body.get("spec") or {}).get("nodeName")
    phase = (body.get("status") or {}).get("phase")
    if not node or meta.get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
        return None
    labels = dict(meta.get("labels") or {})
    return PodSnapshot(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        labels=labels,
        node=str(node),
        rank=pod_rank(meta),
    )


def pod_rank(meta: Mapping[str, Any]) -> tuple[int, int, str]:
    """(group, worker, name): LeaderWorkerSet indices; under NVIDIA Dynamo's Grove path the scaling-group
    replica and the node rank Dynamo gives (leader PodClique 0, worker pod i ``GROVE_PCLQ_POD_INDEX + 1``,
    as ``vibe.serving.rankmap.grove_node_rank`` on the serving side); else the StatefulSet ordinal; else
    name order."""
    labels = meta.get("labels") or {}
    name = str(meta.get("name") or "")
    if LWS_LABEL_WORKER_INDEX in labels:
        return (_int(labels.get(LWS_LABEL_GROUP_INDEX), 0), _int(labels[LWS_LABEL_WORKER_INDEX], 0), name)
    clique, index = str(labels.get(GROVE_LABEL_PCLQ, "")), _int(labels.get(GROVE_LABEL_PCLQ_POD_INDEX), -1)
    if index >= 0 and clique.endswith((GROVE_LEADER_SUFFIX, GROVE_WORKER_SUFFIX)):
        rank = 0 if clique.endswith(GROVE_LEADER_SUFFIX) else index + 1
        return (_int(labels.get(GROVE_LABEL_PCSG_REPLICA), 0), rank, name)
    if STS_LABEL_POD_INDEX in labels:
        return (0, _int(labels[STS_LABEL_POD_INDEX], 0), name)
    owners = meta.get("ownerReferences") or ()
    m = re.search(r"-(\d+)$", name)
    if m and any(o.get("kind") == "StatefulSet" for o in owners):
        return (0, int(m.group(1)), name)
    return (0, 1 << 30, name)


def with_leases(
    profiles: Mapping[str, ProfileSnapshot], leases: Mapping[str, Mapping[str, Any]] | None
) -> Mapping[str, ProfileSnapshot]:
    """The profiles with each node's liveness from its agent's Lease (``renewTime``).

    A node without a Lease keeps the profile's own ``status.heartbeatTime`` (agents from before Leases;
    none: never stale), as does every node when ``leases`` is None (they could not be read).
    """
    if not leases:
        return profiles
    out = dict(profiles)
    for node, snap in profiles.items():
        spec = leases.get(node)
        if spec is None:
            continue
        renewed = parse_time(spec.get("renewTime"))
        if renewed is not None:
            out[node] = replace(snap, heartbeat=renewed)
    return out


def trusted(profiles: Mapping[str, ProfileSnapshot]) -> tuple[dict[str, ProfileSnapshot], list[str]]:
    """The profiles without the GPUs whose UUID more than one node claims, and a note naming them.

    A GPU UUID is hardware identity: two nodes claiming one means one of them lies (or a disk image was
    cloned with a profile in it), and there is no telling which, so neither node's claim is used.
    """
    owners: dict[str, set[str]] = {}
    for node, snap in profiles.items():
        for g in snap.gpus:
            if g.uuid:
                owners.setdefault(g.uuid, set()).add(node)
    dup = {u for u, nodes in owners.items() if len(nodes) > 1}
    if not dup:
        return dict(profiles), []
    out = {}
    for node, snap in profiles.items():
        keep = tuple(g for g in snap.gpus if g.uuid not in dup)
        out[node] = snap if len(keep) == len(snap.gpus) else replace(snap, gpus=keep)
    first = sorted(dup)[0]
    note = (
        f"{len(dup)} GPU UUID(s) claimed by more than one GPUProfile are ignored "
        f"(e.g. {first} on {', '.join(sorted(owners[first]))})"
    )
    return out, [note]


# --------------------------------------------------------------------------------------------------
# Resolution


def resolve(
    spec: DeploymentSpec,
    *,
    namespace: str,
    nodes: Mapping[str, Mapping[str, str]],
    profiles: Mapping[str, ProfileSnapshot],
    pods: Iterable[PodSnapshot] = (),
    now: dt.datetime,
    profile_ttl_s: float,
) -> Resolution:
    """The MoEDeployment's GPUs and fleet, or a ``Problem`` (InsufficientGPUs, InfeasibleSlots, ...).

    Args:
        nodes: node name -> labels, for every node.
        profiles: node name -> its GPUProfile snapshot.
        pods: running pods in ``namespace`` (podSelector mode).
    """
    want = spec.gpus.count
    profiles, notes = trusted(profiles)
    if spec.gpus.pod_selector is not None:
        refs, why = _pod_gpus(spec, namespace, pods, profiles, notes)
    else:
        refs, why = _node_gpus(spec, nodes, profiles)
    if len(refs) < want:
        raise Problem("InsufficientGPUs", f"{why}; gpus.count is {want}" + "".join(f"; {n}" for n in notes))
    refs = refs[:want]
    by_node = {r.node: profiles[r.node] for r in refs}
    _check_memory(spec, refs, by_node)
    curves: list[GPUCurve] = []
    scaled: set[tuple[int, int, str]] = set()
    for r in refs:
        gpu = next(g for g in by_node[r.node].gpus if g.index == r.index)
        tokens, seconds, from_shape = curve_for(gpu, spec.model.shape)
        if from_shape != spec.model.shape:
            scaled.add(from_shape)
        try:
            curves.append(GPUCurve(id=r.id, node=r.node, tokens=tokens, seconds=seconds, uuid=r.uuid))
        except PlacementError as e:
            raise Problem(e.reason, f"GPUProfile {r.node}: {e}") from None
    if scaled:
        shapes = ", ".join(f"{h}x{i} {d}" for h, i, d in sorted(scaled))
        h, i, d = spec.model.shape
        notes.append(f"curves scaled from {shapes} (no GPU measured {h}x{i} {d})")
    stale = sorted(n for n, p in by_node.items() if p.stale(now, profile_ttl_s))
    ttl = dt.timedelta(seconds=profile_ttl_s)
    deadlines = [p.heartbeat + ttl for n, p in by_node.items() if p.heartbeat is not None and n not in stale]
    return Resolution(
        gpus=tuple(refs),
        fleet=Fleet(tuple(curves)),
        curve_source="scaled" if scaled else "measured",
        stale_nodes=tuple(stale),
        notes=tuple(notes),
        stale_at=min(deadlines) if deadlines else None,
    )


def curve_for(
    gpu: ProfileGPU, shape: tuple[int, int, str]
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, str]]:
    """(tokens, seconds, measured shape): the exact shape, else the closest by weight bytes, scaled."""
    if not gpu.curves:
        raise Problem("InvalidGPUProfile", f"GPU {gpu.index} ({gpu.uuid or 'no uuid'}) has no curves")
    for c in gpu.curves:
        if c.shape == shape:
            return c.tokens, c.seconds, c.shape
    want = _weight_bytes(shape)
    best = min(gpu.curves, key=lambda c: (abs(np.log(_weight_bytes(c.shape) / want)), c.shape))
    return best.tokens, scale_curve(best.seconds, from_shape=best.shape, to_shape=shape), best.shape


def matches_labels(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def matches_selector(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels and matchExpressions) against labels."""
    if not matches_labels(selector.get("matchLabels") or {}, labels):
        return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr.get("key"), expr.get("operator"), set(expr.get("values") or ())
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def expert_bytes(spec: DeploymentSpec) -> float:
    """Weight bytes of one routed expert (SwiGLU: gate, up and down projections)."""
    return 3.0 * spec.model.hidden_size * spec.model.intermediate_size * DTYPE_BYTES[spec.model.dtype]


# --------------------------------------------------------------------------------------------------


def _node_gpus(
    spec: DeploymentSpec, nodes: Mapping[str, Mapping[str, str]], profiles: Mapping[str, ProfileSnapshot]
) -> tuple[list[GPURef], str]:
    selector = spec.gpus.node_selector or {}
    matched = sorted(n for n, labels in nodes.items() if matches_labels(selector, labels))
    refs: list[GPURef] = []
    missing = []
    for n in matched:
        prof = profiles.get(n)
        if prof is None:
            missing.append(n)
            continue
        refs.extend(GPURef(n, g.index, g.uuid) for g in prof.gpus)
        if len(refs) >= spec.gpus.count:
            break
    sel = ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "(all nodes)"
    why = f"gpus.nodeSelector {sel} matches {len(matched)} nodes with {len(refs)} profiled GPUs"
    if missing:
        why += f" ({len(missing)} without a GPUProfile: {_few(missing)})"
    return refs, why


def _pod_gpus(
    spec: DeploymentSpec,
    namespace: str,
    pods: Iterable[PodSnapshot],
    profiles: Mapping[str, ProfileSnapshot],
    notes: list[str],
) -> tuple[list[GPURef], str]:
    """The pods' GPUs in rank order (appends to ``notes`` when some were guessed)."""
    selector = spec.gpus.pod_selector or {}
    matched = sorted(
        (p for p in pods if p.namespace == namespace and matches_selector(selector, p.labels)),
        key=lambda p: p.rank,
    )
    per_pod = spec.gpus.gpus_per_pod
    # GPUs the kubelet assigned (reported by the agent) are taken first, whatever the rank order.
    taken: dict[str, set[int]] = {}
    for p in matched:
        prof = profiles.get(p.node)
        if prof is not None and prof.pods is not None and (p.namespace, p.name) in prof.pods:
            own = set(prof.pods[(p.namespace, p.name)])
            taken.setdefault(p.node, set()).update(g.index for g in prof.gpus if g.uuid in own)
    refs: list[GPURef] = []
    short = []
    guessed = []
    for p in matched:
        prof = profiles.get(p.node)
        if prof is not None and prof.pods is not None and (p.namespace, p.name) in prof.pods:
            own = set(prof.pods[(p.namespace, p.name)])
            gpus = [g for g in prof.gpus if g.uuid in own]
            if not gpus:
                short.append(f"{p.name} on {p.node}")
                break
        else:
            held = taken.setdefault(p.node, set())
            gpus = [g for g in (prof.gpus if prof else ()) if g.index not in held][:per_pod]
            if len(gpus) < per_pod:
                short.append(f"{p.name} on {p.node}")
                break  # ranks must stay contiguous: later pods cannot fill this pod's place
            held.update(g.index for g in gpus)
            guessed.append(p.name)
        refs.extend(GPURef(p.node, g.index, g.uuid) for g in gpus)
    why = f"gpus.podSelector matches {len(matched)} running pods x {per_pod} GPUs = {len(refs)} profiled GPUs"
    if short:
        why += f" (no GPUProfile with enough GPUs for pod {short[0]})"
    if guessed:
        notes.append(
            f"GPUs of {len(guessed)} pod(s) assumed by the gpusPerPod rule ({_few(guessed)}): their "
            "agents did not report the kubelet's assignment (agent.podResources.enabled)"
        )
    return refs, why


def _check_memory(spec: DeploymentSpec, refs: list[GPURef], profiles: Mapping[str, ProfileSnapshot]) -> None:
    """InfeasibleSlots when a GPU's memory (when known) cannot hold its slots' expert weights."""
    need = expert_bytes(spec) * spec.model.layers * spec.gpus.slots_per_gpu
    for r in refs:
        gpu = next((g for g in profiles[r.node].gpus if g.index == r.index), None)
        if gpu is not None and gpu.memory_bytes and need > gpu.memory_bytes:
            gib = 1 << 30
            raise Problem(
                "InfeasibleSlots",
                f"gpus.slotsPerGPU {spec.gpus.slots_per_gpu} needs "
                f"{need / gib:.1f} GiB of expert weights per GPU ({spec.model.layers} layers x "
                f"{spec.gpus.slots_per_gpu} slots x {expert_bytes(spec) / (1 << 20):.0f} MiB) but GPU "
                f"{r.id} ({gpu.product or 'unknown product'}) has {gpu.memory_bytes / gib:.0f} GiB",
            )


def _memory_bytes(gpu: Mapping[str, Any]) -> int | None:
    """The GPU's memory: ``memoryBytes`` when the agent reports it, else the product name's "80GB"."""
    if gpu.get("memoryBytes"):
        return int(gpu["memoryBytes"])
    m = re.search(r"(\d+)\s*GB\b", str(gpu.get("product") or ""), re.IGNORECASE)
    return int(m.group(1)) * 10**9 if m else None


def _weight_bytes(shape: tuple[int, int, str]) -> float:
    h, i, d = shape
    return h * i * DTYPE_BYTES.get(d, 2.0)


def _int(value: Any, default: int) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
