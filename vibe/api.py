"""The names of vibe's Kubernetes API, spelled once: group, version, kinds, plurals, labels, annotations,
condition types and reasons, and the rank labels of the workloads serving pods run in.

Role: the one vocabulary the operator, the agent, the serving helpers, the demo, the benchmarks and the
tests share, so that a name cannot drift between the component that writes it and the one that reads it.
The CRDs under ``crds/`` are the source of truth for the resources; ``tests/test_api.py`` checks that
these names match them. Pure constants: this module imports nothing of vibe and nothing of Kubernetes,
so every layer may import it. The placement ConfigMap's contract (name, meta key, hash, generation) is
``vibe.contract``; its data keys are the formats' records in ``vibe.engines``.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

# ---- the group and its resources

GROUP = "vibe.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

MOEDEPLOYMENT_KIND = "MoEDeployment"
MOEDEPLOYMENT_PLURAL = "moedeployments"
GPUPROFILE_KIND = "GPUProfile"
GPUPROFILE_PLURAL = "gpuprofiles"

#: Prefix of every label and annotation vibe owns.
PREFIX = f"{GROUP}/"

# ---- annotations

#: On the placement ConfigMap: what the operator remembers between reconciles (``vibe.operator.output``).
#: The contract with the serving pods -- content hash, generation, meta key -- is ``vibe.contract``.
ANNOTATION_PLACEMENT_KEY = PREFIX + "placement-key"
ANNOTATION_INPUTS_GPUS = PREFIX + "inputs-gpus"
ANNOTATION_INPUTS_CURVES = PREFIX + "inputs-curves"
ANNOTATION_INPUTS_LOADS = PREFIX + "inputs-loads"
ANNOTATION_PLACED_AT = PREFIX + "placed-at"
ANNOTATION_SUMMARY = PREFIX + "summary"
#: On a MoEDeployment: changing it makes the operator reconcile again.
ANNOTATION_RECONCILE_TRIGGER = PREFIX + "reconcile-trigger"
#: On a GPUProfile: the agent's calibrated baseline (``vibe.agent.profile``).
ANNOTATION_BASELINE = PREFIX + "baseline"
#: On a load ConfigMap written by ``vibe serving export-loads``.
ANNOTATION_LOADS_FORWARD_PASSES = PREFIX + "loads-forward-passes"
ANNOTATION_LOADS_SOURCE = PREFIX + "loads-source"

#: Kopf keeps its progress and last-handled state under this prefix, and this finalizer.
KOPF_PREFIX = GROUP
FINALIZER = PREFIX + "worker"

# ---- labels

#: On the placement ConfigMap: the MoEDeployment it belongs to.
LABEL_MOEDEPLOYMENT = PREFIX + "moedeployment"
#: On a GPUProfile: its node.
LABEL_NODE = PREFIX + "node"
#: On the local control plane's fake GPU nodes.
LABEL_FAKE_NODE = PREFIX + "fake-node"
#: ``app.kubernetes.io/managed-by``, with the value each writer sets.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_OPERATOR = "vibe"
MANAGED_BY_AGENT = "vibe-agent"

# ---- server-side apply field managers

FIELD_MANAGER_AGENT = "vibe-agent"
FIELD_MANAGER_LOADS = "vibe-loads"
#: ``vibe crds apply`` (and the chart's pre-upgrade hook): the owner of every field of vibe's CRDs.
FIELD_MANAGER_CRDS = "vibe-crds"

# ---- the placement ConfigMap (its contract lives in ``vibe.contract``)

#: The largest placement generation anyone writes or trusts: 2^53 - 1, exact in every JSON reader (int64
#: and float64 alike), so ``generation + 1`` never overflows a status field. The CRD's
#: ``status.placementGeneration`` has the same maximum (``tests/test_api.py`` compares them).
MAX_PLACEMENT_GENERATION = 2**53 - 1

# ---- status conditions of a MoEDeployment (``vibe.operator.conditions``), each with its reasons
#
# Typed: a condition type, a reason, a drift kind or decision is one of the ``Literal``s below, and the
# operator's strict mypy checks every one it writes. The tuples are the ``Literal``s' values (spelled once).

ConditionType = Literal["Ready", "Degraded", "Drifted"]
CONDITION_TYPES: tuple[ConditionType, ...] = get_args(ConditionType)

#: ``Ready``: True ``Placed`` (a placement for the current spec is in the ConfigMap); False ``Pending``
#: (none yet) or the ``ProblemReason`` (or placement library reason) that stops the current spec.
CONDITION_READY: Final = "Ready"
ReadyReason = Literal["Placed", "Pending"]
REASON_PLACED: Final = "Placed"
REASON_PENDING: Final = "Pending"

#: ``Degraded``: True with the ``ProblemReason`` (or placement library reason) of an input problem the
#: operator cannot fix; False ``InputsHealthy``.
CONDITION_DEGRADED: Final = "Degraded"
DegradedReason = Literal["InputsHealthy"]
REASON_INPUTS_HEALTHY: Final = "InputsHealthy"

#: Reasons of an input problem the operator cannot fix (``vibe.operator.problems.Problem``), besides the
#: placement library's (``vibe.placement.errors.REASONS``), which pass through unchanged.
ProblemReason = Literal[
    "InsufficientGPUs",
    "InfeasibleSlots",
    "InvalidGPUProfile",
    "StaleGPUProfile",
    "ConfigMapNotFound",
    "ConfigMapKeyNotFound",
    "InvalidLoads",
    "ShapeMismatch",
    "PlacementConflict",
    "GenerationExhausted",
    "OutputTooLarge",
    "InstanceTooLarge",
    "Forbidden",
    "APIRefused",
    "UnsupportedReplicaSplit",
]
PROBLEM_REASONS: tuple[ProblemReason, ...] = get_args(ProblemReason)

#: ``Drifted``: True with the ``DriftKind`` (what changed) while a drift keeps the placement in service;
#: False ``NoDrift``, or ``Replaced`` right after a re-placement.
CONDITION_DRIFTED: Final = "Drifted"
DriftedReason = Literal["NoDrift", "Replaced"]
REASON_NO_DRIFT: Final = "NoDrift"
REASON_REPLACED: Final = "Replaced"
DriftKind = Literal["PerformanceDrift", "WorkloadDrift", "GPUsChanged"]
#: The operator's answer to a drift: ``status.drift.decision`` and the Event's reason.
DriftDecision = Literal["Replaced", "DriftBelowThreshold", "ReplacementNotWorthIt", "CooldownActive"]

assert (CONDITION_READY, CONDITION_DEGRADED, CONDITION_DRIFTED) == CONDITION_TYPES

# ---- the workloads serving pods run in: how a pod's expert-parallel rank is read

#: LeaderWorkerSet's API (leaderworkerset.x-k8s.io), whose pod template the ``restart`` policy patches.
LWS_API_GROUP = "leaderworkerset.x-k8s.io"
LWS_API_VERSION = "v1"
LWS_PLURAL = "leaderworkersets"
#: Labels and the annotation LeaderWorkerSet puts on its pods.
LWS_LABEL_NAME = "leaderworkerset.sigs.k8s.io/name"
LWS_LABEL_GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
LWS_LABEL_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
LWS_ANNOTATION_SIZE = "leaderworkerset.sigs.k8s.io/size"
#: The StatefulSet pod ordinal label (Kubernetes >= 1.28).
STS_LABEL_POD_INDEX = "apps.kubernetes.io/pod-index"

#: NVIDIA Dynamo's DynamoGraphDeployment (nvidia.com/v1beta1, the storage version since Dynamo 1.x). Dynamo
#: owns the LeaderWorkerSets / Grove PodCliques it generates and reverts edits to them, so the ``restart``
#: policy patches the DGD itself: a worker component's ``podTemplate`` is part of the worker spec hash
#: that rolls its pods (``deploy/operator/api/v1beta1/worker_hash.go``).
DGD_API_GROUP = "nvidia.com"
DGD_API_VERSION = "v1beta1"
DGD_PLURAL = "dynamographdeployments"
DGD_KIND = "DynamoGraphDeployment"
#: Component types whose pods run an engine (``isWorkerComponent`` in the same file).
DGD_WORKER_TYPES = ("worker", "prefill", "decode")
#: Labels Dynamo puts on every pod it generates (``deploy/operator/internal/consts``).
DYNAMO_LABEL_DGD_NAME = "nvidia.com/dynamo-graph-deployment-name"
DYNAMO_LABEL_COMPONENT = "nvidia.com/dynamo-component"
#: Grove (Dynamo's default multinode path): a multinode component is a PodCliqueScalingGroup replica
#: with a leader PodClique ``...-ldr`` (1 pod) and a worker PodClique ``...-wkr`` (nodeCount - 1 pods).
#: Dynamo gives the leader node rank 0 and a worker ``$((GROVE_PCLQ_POD_INDEX + 1))``
#: (``GroveMultinodeDeployer.GetNodeRank``); Grove labels each pod with the same index.
GROVE_LABEL_PCSG = "grove.io/podcliquescalinggroup"
GROVE_LABEL_PCSG_REPLICA = "grove.io/podcliquescalinggroup-replica-index"
GROVE_LABEL_PCLQ = "grove.io/podclique"
GROVE_LABEL_PCLQ_POD_INDEX = "grove.io/podclique-pod-index"
GROVE_ENV_PCLQ_POD_INDEX = "GROVE_PCLQ_POD_INDEX"
GROVE_LEADER_SUFFIX = "-ldr"
GROVE_WORKER_SUFFIX = "-wkr"
