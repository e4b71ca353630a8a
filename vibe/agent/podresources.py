"""Which GPUs each pod on this node holds, from the kubelet's pod-resources API (gRPC over a unix socket).

Role in the data flow: the truth behind a serving pod's expert-parallel ranks. The operator used to assume
that the pods of a ``podSelector`` deployment take "the next ``gpusPerPod`` GPUs" of their node; the
device plugin decides that, and only the kubelet knows. Like dcgm-exporter, the agent reads the
kubelet's ``v1.PodResourcesLister/List`` (socket ``/var/lib/kubelet/pod-resources/kubelet.sock``,
mounted from the host when ``agent.podResources.enabled``) and publishes, per pod, the UUIDs of its
``nvidia.com/gpu`` devices in GPUProfile ``spec.pods``; the operator orders a pod's ranks by them.

The messages are built at run time from the public proto's field numbers
(``k8s.io/kubelet/pkg/apis/podresources/v1/api.proto``, package ``v1``), only the fields read here:
protobuf skips the others (CPU ids, memory, dynamic resources, topology), so no generated code ties
this module to one protobuf release. grpcio and protobuf are the optional extra ``podresources``.

The NVIDIA device plugin names devices by GPU UUID (its default ``DEVICE_ID_STRATEGY=uuid``); with the
``index`` strategy the IDs are NVML indexes, mapped to UUIDs with the agent's GPU list.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from vibe.agent.profile import GPU_RESOURCE

log = logging.getLogger("vibe.agent.podresources")

SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
LIST_METHOD = "/v1.PodResourcesLister/List"

# (message, [(field, number, type, repeated, message type)]) of the public proto, the fields read here.
_STRING, _MESSAGE = 9, 11  # FieldDescriptorProto.TYPE_*
_MESSAGES: tuple[tuple[str, tuple[tuple[str, int, int, bool, str], ...]], ...] = (
    ("ListPodResourcesRequest", ()),
    ("ListPodResourcesResponse", (("pod_resources", 1, _MESSAGE, True, ".v1.PodResources"),)),
    (
        "PodResources",
        (
            ("name", 1, _STRING, False, ""),
            ("namespace", 2, _STRING, False, ""),
            ("containers", 3, _MESSAGE, True, ".v1.ContainerResources"),
        ),
    ),
    (
        "ContainerResources",
        (("name", 1, _STRING, False, ""), ("devices", 2, _MESSAGE, True, ".v1.ContainerDevices")),
    ),
    ("ContainerDevices", (("resource_name", 1, _STRING, False, ""), ("device_ids", 2, _STRING, True, ""))),
)


@functools.lru_cache(maxsize=1)
def messages() -> dict[str, Any]:
    """Message classes of ``v1`` (name -> class), built once from the descriptors above."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(
        name="vibe/podresources/v1/api.proto", package="v1", syntax="proto3"
    )
    for name, fields in _MESSAGES:
        m = f.message_type.add(name=name)
        for fname, number, ftype, repeated, type_name in fields:
            fd = m.field.add(name=fname, number=number, type=ftype)
            fd.label = fd.LABEL_REPEATED if repeated else fd.LABEL_OPTIONAL
            if type_name:
                fd.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    fd_ = pool.Add(f)
    return {name: message_factory.GetMessageClass(fd_.message_types_by_name[name]) for name, _ in _MESSAGES}


class PodResourcesError(RuntimeError):
    """The socket is missing or the kubelet did not answer."""


def list_pod_resources(socket: str = SOCKET, timeout_s: float = 5.0) -> Any:
    """One ``List`` call: the kubelet's ``ListPodResourcesResponse``."""
    import grpc

    msgs = messages()
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        call = channel.unary_unary(
            LIST_METHOD,
            request_serializer=msgs["ListPodResourcesRequest"].SerializeToString,
            response_deserializer=msgs["ListPodResourcesResponse"].FromString,
        )
        try:
            return call(msgs["ListPodResourcesRequest"](), timeout=timeout_s)
        except grpc.RpcError as e:
            raise PodResourcesError(
                f"kubelet pod-resources at {socket}: {e.code().name}: {e.details()}"
            ) from None


def pod_gpus(response: Any, uuid_by_index: Mapping[str, str], known: Sequence[str]) -> list[dict[str, Any]]:
    """Per pod holding GPUs: ``{"namespace", "name", "gpus": [UUID, ...]}``, GPUs in the agent's index
    order (the order CUDA numbers them inside the container), pods by (namespace, name).

    ``uuid_by_index``: NVML index (as text) -> UUID, for the device plugin's ``index`` ID strategy;
    ``known``: this node's GPU UUIDs in index order (IDs that are neither are dropped).
    """
    order = {u: k for k, u in enumerate(known)}
    out = []
    for pod in response.pod_resources:
        ids = [
            d
            for c in pod.containers
            for dev in c.devices
            if dev.resource_name == GPU_RESOURCE
            for d in dev.device_ids
        ]
        uuids = {uuid_by_index.get(d, d) for d in ids}
        gpus = sorted((u for u in uuids if u in order), key=order.__getitem__)
        if gpus:
            out.append({"namespace": pod.namespace, "name": pod.name, "gpus": gpus})
    return sorted(out, key=lambda p: (p["namespace"], p["name"]))


class PodResourcesReader:
    """Reads the mapping for a node agent (``read(agent)`` -> the list for GPUProfile ``spec.pods``, or
    None when the kubelet cannot be asked: then the operator's ``gpusPerPod`` rule applies)."""

    def __init__(self, socket: str = SOCKET) -> None:
        self.socket = socket
        self._said = ""

    def read(self, infos: Sequence[Any]) -> list[dict[str, Any]] | None:
        known = [g.uuid for g in sorted(infos, key=lambda g: g.index)]
        try:
            rsp = list_pod_resources(self.socket)
        except (PodResourcesError, ImportError) as e:
            if str(e) != self._said:
                log.warning("%s; pods' GPUs unknown (the operator falls back to gpus.gpusPerPod)", e)
                self._said = str(e)
            return None
        self._said = ""
        return pod_gpus(rsp, {str(g.index): g.uuid for g in infos}, known)
