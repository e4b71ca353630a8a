"""Fixtures for the serving tests (helpers live in ``serving_helpers``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_helpers import KubeletVolume


@pytest.fixture
def volume(tmp_path: Path) -> KubeletVolume:
    """An empty kubelet-style ConfigMap volume under tmp_path."""
    return KubeletVolume(tmp_path / "placement")


@pytest.fixture
def kube_api(request: pytest.FixtureRequest):
    """The session's admin ApiClient (tests/conftest.py's ``kube``), under a name that does not shadow
    ``vibe.serving.kube`` in the test modules."""
    return request.getfixturevalue("kube")


@pytest.fixture
def dgd_crd(kube_api) -> Iterator[None]:
    """``upstream_crds.STAND_IN_DGD_CRD`` for one test (Dynamo's own CRD cannot be had: see there)."""
    from upstream_crds import STAND_IN_DGD_CRD, installed

    with installed(kube_api, [STAND_IN_DGD_CRD]):
        yield


@pytest.fixture
def lws_crd(kube_api) -> Iterator[None]:
    """LeaderWorkerSet's own CRD (tests/upstream_crds.py), for one test."""
    from upstream_crds import LWS_CRD, LWS_MODULE, crd, installed

    with installed(kube_api, [crd(LWS_MODULE, LWS_CRD)]):
        yield
