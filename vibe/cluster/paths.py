"""Where the local control plane keeps its files.

- binaries: ``$VIBE_BIN_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/vibe/bin/<component>-<version>/``, shared
  by every cluster and filled by ``hack/build-cluster.sh`` (the same default lives there);
- one directory per named cluster: ``${XDG_STATE_HOME:-~/.local/state}/vibe/clusters/<name>/`` holding
  the PKI, the admin kubeconfig, the kine database, one log per component and ``state.json`` (the PIDs
  and ports that ``down`` needs). ``down`` removes the whole directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_CLUSTER = "vibe"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def bin_root() -> Path:
    """Root of the binary cache (one sub-directory per component and version)."""
    value = os.environ.get("VIBE_BIN_DIR")
    return Path(value) if value else _xdg("XDG_CACHE_HOME", ".cache") / "vibe" / "bin"


def clusters_root() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state") / "vibe" / "clusters"


def check_name(name: str) -> str:
    """Cluster names become directory names and certificate names: keep them DNS-label-like."""
    if not _NAME.match(name):
        raise ValueError(f"cluster name {name!r}: use lowercase letters, digits and '-' (at most 40)")
    return name


def state_dir(name: str = DEFAULT_CLUSTER) -> Path:
    return clusters_root() / check_name(name)
