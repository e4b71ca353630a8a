"""The kubelet pod-resources client against a real gRPC server on a unix socket (in this process).

The server speaks ``v1.PodResourcesLister/List`` over HTTP/2 as the kubelet does; its responses are
encoded with the public proto's field numbers, including fields the client does not read (CPU ids,
topology), which a real kubelet sends too.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")  # the podresources extra (installed by `make setup`)

from vibe.agent.node import NodeAgent  # noqa: E402
from vibe.agent.podresources import LIST_METHOD, PodResourcesReader, messages  # noqa: E402
from vibe.agent.runner import Runner, RunnerConfig  # noqa: E402
from vibe.agent.simulate import SimProfiler, SimTelemetry, parse_fleet  # noqa: E402


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _field(number: int, payload: bytes) -> bytes:  # a length-delimited field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _pod(ns: str, name: str, containers: list[tuple[str, list[tuple[str, list[str]]]]]) -> bytes:
    body = _field(1, name.encode()) + _field(2, ns.encode())
    for cname, devices in containers:
        c = _field(1, cname.encode())
        for resource, ids in devices:
            d = _field(1, resource.encode()) + b"".join(_field(2, i.encode()) for i in ids)
            d += _field(3, _field(1, _field(1, b"\x08\x01")))  # topology {nodes [{ID: 1}]}: not read
            c += _field(2, d)
        c += _field(3, b"\x02\x03")  # cpu_ids (packed): not read
        body += _field(3, c)
    return body


def kubelet_response(gpus: list[str]) -> bytes:
    """What a kubelet answers for a node: two serving pods, a CPU-only pod, one with another device."""
    pods = [
        _pod("ml", "sglang-1", [("engine", [("nvidia.com/gpu", [gpus[3], gpus[2]])])]),
        _pod("ml", "sglang-0", [("engine", [("nvidia.com/gpu", [gpus[0]])]), ("sidecar", [])]),
        _pod("ml", "by-index", [("engine", [("nvidia.com/gpu", ["1"])])]),  # DEVICE_ID_STRATEGY=index
        _pod("kube-system", "coredns", [("coredns", [])]),
        _pod("ml", "nic", [("engine", [("rdma/hca", ["mlx5_0"])])]),
    ]
    return b"".join(_field(1, p) for p in pods)


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[tuple[str, list[Any]]]:
    """A gRPC server on ``<tmp>/kubelet.sock`` answering List; yields (socket, the node's GPU infos)."""
    fleet = parse_fleet({"nodes": [{"name": "n", "gpus": 4}], "seed": 1})
    infos = SimTelemetry(fleet.nodes["n"], lambda: 0.0).gpus()
    answer = kubelet_response([g.uuid for g in infos])
    calls: list[bytes] = []

    def list_(request: bytes, context: Any) -> bytes:
        calls.append(request)
        return answer

    handler = grpc.method_handlers_generic_handler(
        "v1.PodResourcesLister",
        {"List": grpc.unary_unary_rpc_method_handler(list_)},  # raw bytes in and out
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    sock = str(tmp_path / "kubelet.sock")
    assert server.add_insecure_port(f"unix://{sock}")
    server.start()
    try:
        yield sock, infos
    finally:
        server.stop(grace=None)
    assert all(c == b"" for c in calls)  # ListPodResourcesRequest has no fields
    assert LIST_METHOD == "/v1.PodResourcesLister/List"


def test_each_pods_gpus_in_index_order(kubelet: tuple[str, list[Any]]) -> None:
    sock, infos = kubelet
    uuids = [g.uuid for g in infos]
    got = PodResourcesReader(sock).read(infos)
    assert got == [
        {"namespace": "ml", "name": "by-index", "gpus": [uuids[1]]},
        {"namespace": "ml", "name": "sglang-0", "gpus": [uuids[0]]},
        {"namespace": "ml", "name": "sglang-1", "gpus": [uuids[2], uuids[3]]},
    ]


def test_the_runner_publishes_the_mapping_when_it_changes(kubelet: tuple[str, list[Any]]) -> None:
    sock, _ = kubelet
    fleet = parse_fleet({"nodes": [{"name": "n", "gpus": 4}], "seed": 1})
    gpus = fleet.nodes["n"]
    agent = NodeAgent("n", SimTelemetry(gpus, lambda: 0.0), SimProfiler(gpus, lambda: 0.0), clock=lambda: 0.0)
    runner = Runner([agent], None, RunnerConfig(shapes_seconds=0), pod_resources=PodResourcesReader(sock))
    runner.tick()
    body = agent.body()
    assert [p["name"] for p in body["spec"]["pods"]] == ["by-index", "sglang-0", "sglang-1"]
    runner.close()


def test_no_kubelet_is_one_warning_and_no_mapping(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reader = PodResourcesReader(str(tmp_path / "missing.sock"))
    fleet = parse_fleet({"nodes": [{"name": "n", "gpus": 1}], "seed": 1})
    infos = SimTelemetry(fleet.nodes["n"], lambda: 0.0).gpus()
    assert reader.read(infos) is None and reader.read(infos) is None
    said = [r for r in caplog.records if "gpusPerPod" in r.getMessage()]
    assert len(said) == 1 and "UNAVAILABLE" in said[0].getMessage()


def test_the_messages_match_the_public_field_numbers() -> None:
    m = messages()
    resp = m["ListPodResourcesResponse"].FromString(kubelet_response(["GPU-a", "GPU-b", "GPU-c", "GPU-d"]))
    first = resp.pod_resources[0]
    assert (first.namespace, first.name) == ("ml", "sglang-1")
    dev = first.containers[0].devices[0]
    assert dev.resource_name == "nvidia.com/gpu" and list(dev.device_ids) == ["GPU-d", "GPU-c"]
