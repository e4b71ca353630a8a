"""Fixtures of the chart tests (helpers in ``chart_helpers``)."""

from __future__ import annotations

import pytest
from chart_helpers import Helm, helm_binary


@pytest.fixture(scope="session")
def helm() -> Helm:
    """helm, pinned by hack/k8s/go.mod (built on first use, like the rest of the control plane)."""
    return Helm(helm_binary())
