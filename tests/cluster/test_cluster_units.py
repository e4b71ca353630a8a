"""The parts of vibe.cluster that need no running control plane: pins, certificates, node bodies, ports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vibe.cluster import binaries, gpu_node_body, pki
from vibe.cluster.paths import check_name, state_dir
from vibe.cluster.processes import alive, free_ports, port_in_use


def test_pinned_versions_match_the_wrapper_modules() -> None:
    assert binaries.pinned_version("kubernetes") == "v1.37.2"
    for component in binaries.COMPONENTS:
        assert binaries.pinned_version(component).startswith("v")
    # Every staging module is replaced with the tag matching the kubernetes version.
    gomod = (binaries.HACK_DIR / "k8s" / "go.mod").read_text()
    for staging in ("k8s.io/api", "k8s.io/apiserver", "k8s.io/client-go", "k8s.io/kubectl"):
        assert f"{staging} => {staging} v0.37.2" in gomod


def test_locate_puts_each_binary_under_component_and_version(tmp_path: Path) -> None:
    found = binaries.locate(tmp_path)
    assert found["kube-apiserver"] == tmp_path / "kubernetes-v1.37.2" / "kube-apiserver"
    assert found["kwok"].parent.name == f"kwok-{binaries.pinned_version('kwok')}"
    assert set(found.missing_components()) == set(binaries.COMPONENTS)
    assert found.missing_components(binaries.RUNTIME) == list(binaries.RUNTIME)


def test_build_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(binaries.BUILD_SCRIPT)], check=True)


def test_pki_chain(tmp_path: Path) -> None:
    p = pki.generate(tmp_path / "pki", "demo")
    ca = x509.load_pem_x509_certificate(p.ca_cert.read_bytes())
    serving = x509.load_pem_x509_certificate(p.serving_cert.read_bytes())
    admin = x509.load_pem_x509_certificate(p.admin_cert.read_bytes())
    front = x509.load_pem_x509_certificate(p.front_proxy_cert.read_bytes())
    front_ca = x509.load_pem_x509_certificate(p.front_proxy_ca.read_bytes())
    serving.verify_directly_issued_by(ca)
    admin.verify_directly_issued_by(ca)
    front.verify_directly_issued_by(front_ca)
    with pytest.raises(Exception):  # noqa: B017 - the front proxy CA must not sign ordinary clients
        admin.verify_directly_issued_by(front_ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.96.0.1"]
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    usage = admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert oct(p.admin_key.stat().st_mode & 0o777) == "0o600"


def test_gpu_node_body_has_gfd_labels_capacity_and_taints() -> None:
    body = gpu_node_body(
        "n-0",
        gpus_per_node=4,
        product="NVIDIA-H200",
        labels={"pool": "a"},
        taints=[{"key": "k", "effect": "NoSchedule"}],
    )
    labels = body["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H200"
    assert labels["nvidia.com/gpu.count"] == "4"
    assert labels["nvidia.com/gpu.memory"] == "143771"
    assert labels["nvidia.com/gpu.family"] == "hopper"
    assert labels["nvidia.com/gpu.present"] == "true"
    assert labels["pool"] == "a"
    assert body["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert body["status"]["capacity"]["nvidia.com/gpu"] == "4"
    assert body["status"]["allocatable"] == body["status"]["capacity"]
    assert body["spec"]["taints"] == [{"key": "k", "effect": "NoSchedule"}]


def test_cluster_names_are_checked() -> None:
    assert state_dir("vibe-test").name == "vibe-test"
    for bad in ("", "Vibe", "a/b", "../x", "-x", "x" * 41):
        with pytest.raises(ValueError):
            check_name(bad)


def test_free_ports_are_distinct_and_free() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert not any(port_in_use(p) for p in ports)


def test_alive_checks_the_executable() -> None:
    exe = shutil.which("sleep")
    assert exe is not None
    proc = subprocess.Popen([exe, "30"])
    try:
        # At once: right after Popen returns the kernel may not have mapped the new image's arguments
        # yet (cmdline reads empty); alive must still say yes.
        assert alive(proc.pid, exe)
        assert not alive(proc.pid, "/not/this/one")
    finally:
        proc.kill()
        proc.wait()
    assert not alive(proc.pid, exe)
