"""The binaries the local control plane runs, and how to get them.

Versions have one source of truth: the wrapper Go modules under ``hack/`` (``hack/k8s/go.mod`` pins
k8s.io/kubernetes, kwok and helm; ``hack/tools/kine/go.mod`` pins kine; ``hack/tools/prometheus/go.mod``
pins prometheus and promtool, for the alert tests). ``hack/build-cluster.sh``
builds them into ``<bin root>/<component>-<version>/``; this module reads the same go.mod files to know
where to look, and runs the script when something is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vibe.cluster.paths import bin_root

HACK_DIR = Path(__file__).resolve().parents[2] / "hack"
BUILD_SCRIPT = HACK_DIR / "build-cluster.sh"

# component -> (wrapper module directory under hack/, pinned module path, binaries it provides)
COMPONENTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "kubernetes": (
        "k8s",
        "k8s.io/kubernetes",
        ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
    ),
    "kine": ("tools/kine", "github.com/k3s-io/kine", ("kine",)),
    "kwok": ("k8s", "sigs.k8s.io/kwok", ("kwok",)),
    "helm": ("k8s", "helm.sh/helm/v3", ("helm",)),
    "prometheus": ("tools/prometheus", "github.com/prometheus/prometheus", ("prometheus", "promtool")),
}


# What `up` needs; helm (chart tests, demo) and prometheus (alert tests) are built by the script too.
RUNTIME = ("kubernetes", "kine", "kwok")


class BinariesMissing(RuntimeError):
    """Some binary is not built yet (and building was not allowed, or failed)."""


def pinned_version(component: str) -> str:
    """The version of ``component`` that its wrapper go.mod requires, e.g. ``v1.37.2``."""
    moddir, module, _ = COMPONENTS[component]
    gomod = HACK_DIR / moddir / "go.mod"
    try:
        text = gomod.read_text()
    except FileNotFoundError:
        raise BinariesMissing(
            f"{gomod} not found: vibe.cluster needs the repository's hack/ directory (install with pip -e)"
        ) from None
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if not match:
        raise BinariesMissing(f"{gomod} does not require {module}")
    return match.group(1)


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every binary, by name (``kube-apiserver``, ``kine``, ``kwok``, ...)."""

    paths: dict[str, Path]
    versions: dict[str, str]

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]

    def missing(self) -> list[str]:
        return [name for name, path in self.paths.items() if not path.is_file()]

    def missing_components(self, components: Iterable[str] = tuple(COMPONENTS)) -> list[str]:
        gone = set(self.missing())
        return [c for c in components if gone.intersection(COMPONENTS[c][2])]


def locate(root: Path | None = None) -> Binaries:
    """Where every pinned binary is (or will be, once built)."""
    root = root or bin_root()
    paths: dict[str, Path] = {}
    versions: dict[str, str] = {}
    for component, (_, _, bins) in COMPONENTS.items():
        version = pinned_version(component)
        versions[component] = version
        for name in bins:
            paths[name] = root / f"{component}-{version}" / name
    return Binaries(paths, versions)


def build_command(components: Iterable[str] = ()) -> list[str]:
    return ["bash", str(BUILD_SCRIPT), *components]


def build(components: Iterable[str] = (), on_line: Callable[[str], None] | None = None) -> None:
    """Run ``hack/build-cluster.sh`` for ``components`` (all when empty), passing each output line on."""
    if shutil.which("go") is None:
        raise BinariesMissing(
            "the local control plane's binaries are not built and `go` is not on PATH: install Go, then run "
            f"`{BUILD_SCRIPT.relative_to(HACK_DIR.parent)}`"
        )
    proc = subprocess.Popen(
        build_command(components), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail = [*tail[-30:], line]
        if on_line:
            on_line(line)
    if proc.wait() != 0:
        raise BinariesMissing("hack/build-cluster.sh failed:\n" + "\n".join(tail))


def ensure(
    build_missing: bool = True,
    on_line: Callable[[str], None] | None = None,
    components: Iterable[str] = tuple(COMPONENTS),
) -> Binaries:
    """The binaries, building the missing ``components`` (default: all) first when ``build_missing``."""
    binaries = locate()
    missing = binaries.missing_components(components)
    if missing and not build_missing:
        raise BinariesMissing(
            f"not built yet: {', '.join(missing)} (in {bin_root()}); "
            f"build them with `{BUILD_SCRIPT.relative_to(HACK_DIR.parent)}`"
        )
    if missing:
        build(missing, on_line)
        binaries = locate()
        if binaries.missing_components(components):
            raise BinariesMissing(f"still missing after the build: {', '.join(binaries.missing())}")
    return binaries
