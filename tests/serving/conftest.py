"""Fixtures for the serving tests (helpers live in ``serving_helpers``)."""

from __future__ import annotations

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
