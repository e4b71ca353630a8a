"""The images the chart runs: Dockerfiles that match the chart, and a command line the CLI accepts.

No image is built here (no container runtime on the test machines); what can be checked without one is:
the user the Dockerfile runs as is the one the chart's securityContext names, the exposed ports are the
chart's default ports, the agent builds on a CUDA base with the benchmark extra, the build context sends
only what pip needs, and every flag the chart passes to `vibe` is one the CLI knows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from chart_helpers import CHART, ROOT, VALUES_DIR, Helm, pod_specs
from typer.testing import CliRunner

from vibe.cli import app

IMAGES = ROOT / "images"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def _final_stage(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text().splitlines()
    lines = [ln.strip() for ln in text if ln.strip() and not ln.startswith("#")]
    starts = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    return lines[starts[-1] :]


@pytest.mark.parametrize("component", ["operator", "agent"])
def test_dockerfile_matches_the_chart(component: str) -> None:
    dockerfile = IMAGES / component / "Dockerfile"
    final = _final_stage(dockerfile)
    values = VALUES[component]
    ctx = values["podSecurityContext"]
    assert f"USER {ctx['runAsUser']}:{ctx['runAsGroup']}" in final
    assert 'ENTRYPOINT ["vibe"]' in final
    exposed = {int(p) for ln in final if ln.startswith("EXPOSE") for p in ln.split()[1:]}
    ports = {values["metrics"]["port"]} | ({values["health"]["port"]} if "health" in values else set())
    assert exposed == ports
    assert values["image"]["repository"] == f"vibe-{component}"
    assert not re.search(r"^\s*(ADD|RUN .*curl|RUN .*wget)", dockerfile.read_text(), re.MULTILINE)
    ignore = (IMAGES / component / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"] and "!vibe/" in ignore and "!pyproject.toml" in ignore


def test_agent_image_has_one_cuda_torchs() -> None:
    """No CUDA base under torch's own CUDA libraries (CUDA twice); torch pinned with its CUDA variant."""
    text = (IMAGES / "agent" / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert froms and all(f.startswith("python:") for f in froms)
    assert "\"torch==${TORCH_VERSION}\" '.[bench,podresources]'" in text
    assert "torch.version.cuda" in text and "${TORCH_CUDA}" in text
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text


def test_default_images_are_fully_qualified_with_the_app_version(helm: Helm) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    registry = VALUES["imageRegistry"]
    images = {c["name"]: c["image"] for _, spec in pod_specs(helm.template()) for c in spec["containers"]}
    assert images == {
        "operator": f"{registry}/vibe-operator:{chart['appVersion']}",
        "agent": f"{registry}/vibe-agent:{chart['appVersion']}",
        "crds-upgrade": f"{registry}/vibe-operator:{chart['appVersion']}",  # the pre-upgrade hook
    }
    # A registry host (with a dot) as the first path component: no runtime resolves it to Docker Hub.
    assert "." in registry.split("/")[0]
    assert "imageRegistry" in (IMAGES / "README.md").read_text()
    other = {
        c["name"]: c["image"]
        for _, spec in pod_specs(
            helm.template(
                {
                    "imageRegistry": "reg.local:5000/ml",
                    "agent": {
                        "image": {"registry": "other.io/x", "tag": "t", "digest": "sha256:" + "a" * 64}
                    },
                }
            )
        )
        for c in spec["containers"]
    }
    assert other == {
        "operator": f"reg.local:5000/ml/vibe-operator:{chart['appVersion']}",
        "agent": "other.io/x/vibe-agent:t@sha256:" + "a" * 64,
        "crds-upgrade": f"reg.local:5000/ml/vibe-operator:{chart['appVersion']}",
    }


@pytest.mark.parametrize("files", [[], [VALUES_DIR / "namespaced.yaml"], [VALUES_DIR / "full.yaml"]])
def test_the_cli_accepts_the_charts_arguments(helm: Helm, files: list[Path]) -> None:
    runner = CliRunner()
    for where, spec in pod_specs(helm.template(files=files)):
        for c in spec["containers"]:
            args = c["args"]
            command = [a for a in args if not a.startswith("-")]
            help_text = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "250"}).output
            assert "Usage" in help_text, f"{where}: `vibe {' '.join(command)}` is not a command:\n{help_text}"
            for a in args:
                if a.startswith("--"):
                    flag = a.split("=", 1)[0]
                    assert re.search(rf"{re.escape(flag)}\b", help_text), f"{where}: vibe has no {flag}"
