"""The demo's steps: bring up, install, place, throttle one GPU, re-place — each read back from the cluster.

Every figure the demo prints comes from the API server (MoEDeployment status, the placement ConfigMap,
GPUProfiles, Events) or from the operator's and agent's /metrics endpoints, parsed with
prometheus-client's parser. The demo's own variables only decide what to wait for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from vibe import api, contract
from vibe.api import GPUPROFILE_PLURAL, GROUP, MOEDEPLOYMENT_PLURAL, VERSION
from vibe.clikit import fail
from vibe.cluster.processes import free_port
from vibe.cluster.waiting import wait_for

HERE = Path(__file__).resolve().parent
#: The chart of a source checkout (the demo installs the chart next to the code it runs).
CHART = HERE.parent.parent / "charts" / "vibe"


def find_chart() -> Path:
    """The Helm chart to install: ``$VIBE_CHART``, else the checkout's ``charts/vibe``.

    A wheel carries the Python package only (no chart, no Go modules for the control plane): the demo
    then says where to point it instead of failing inside helm.
    """
    chart = Path(os.environ.get("VIBE_CHART") or CHART)
    if not (chart / "Chart.yaml").is_file():
        raise DemoError(
            f"no Helm chart at {chart}: `vibe demo` runs from a source checkout (make demo), or set "
            "VIBE_CHART to the charts/vibe directory of one"
        )
    return chart


COMMAND = "vibe demo"
SYSTEM_NS, DEMO_NS, RELEASE = "vibe-system", "vibe-demo", "vibe"
NODES, GPUS_PER_NODE, POOL = 8, 8, {api.PREFIX + "pool": "demo"}
LOADS_CM = "deepseek-v3-expert-loads"

console = Console(stderr=True, highlight=False)


class DemoError(RuntimeError):
    """A step failed; the message says which and where its logs are."""


@dataclass
class Process:
    """A component started by the demo, with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise DemoError(
                f"{self.name} exited with {self.proc.returncode}; last lines of {self.log}:\n{tail}"
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape ``127.0.0.1:port/metrics`` into {(sample name, sorted labels): value}."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], sample: str, **labels: str
) -> float:
    """Sum of the samples called ``sample`` whose labels include ``labels``."""
    return sum(
        v for (n, ls), v in samples.items() if n == sample and all((k, w) in ls for k, w in labels.items())
    )


class Demo:
    def __init__(self, cluster_name: str, workdir: Path, keep: bool) -> None:
        from vibe.cluster import Cluster

        self.cluster = Cluster(cluster_name)
        self.workdir = workdir
        self.keep = keep
        self.processes: list[Process] = []
        self.step_no = 0
        self.api: Any = None
        self.started = datetime.now(timezone.utc).replace(microsecond=0)

    # -- narration ----------------------------------------------------------------------------------

    def step(self, title: str) -> None:
        self.step_no += 1
        console.rule(f"[bold]{self.step_no}. {title}")

    def say(self, text: str) -> None:
        console.print(f"  {text}")

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.control_plane()
            self.clean_previous_run()
            self.install_chart()
            agent_port = self.start_agent()
            op_port = self.start_operator()
            self.apply_deployment()
            self.show_placement(op_port)
            self.throttle_and_replace(agent_port, op_port)
        finally:
            for p in reversed(self.processes):
                p.stop()
        console.rule("[bold green]done")
        if not self.keep:
            self.cluster.down()
            self.say(
                f"The demo took {time.monotonic() - started:.0f}s; cluster {self.cluster.name!r} is down."
            )
            return
        self.say(f"The demo took {time.monotonic() - started:.0f}s. The cluster is still up to look around:")
        vibe = _vibe_command()
        self.say(
            f'  eval "$({vibe} cluster status --name {self.cluster.name})"; kubectl get moed,gpuprofiles -A; '
            f"kubectl -n {DEMO_NS} get cm deepseek-v3-placement -o yaml"
        )
        self.say(f"Remove it with `{vibe} cluster down --name {self.cluster.name}`.")

    def control_plane(self) -> None:
        from vibe.cluster import create_gpu_nodes, wait_nodes_ready

        self.step("Local control plane: kube-apiserver, controller-manager, scheduler, kine, kwok")
        self.cluster.up(progress=lambda m: self.say(m))
        self.api = self.cluster.api_client()
        names = create_gpu_nodes(NODES, GPUS_PER_NODE, labels=POOL, api=self.api)
        wait_nodes_ready(self.api, names, timeout=60)
        self.say(
            f"{len(names)} fake GPU nodes Ready ({GPUS_PER_NODE} x H100 each, label vibe.dev/pool=demo): "
            f"{', '.join(names)}"
        )

    def clean_previous_run(self) -> None:
        """Start from a clean state on a cluster an earlier demo kept (the README invites keeping it): its
        GPUProfiles still show the throttled GPU, and its MoEDeployment, placement at generation 2 and
        Events would make this run's story wrong (issue 15 #13). The cluster and the release stay."""
        from kubernetes import client

        custom = client.CustomObjectsApi(self.api)
        core = client.CoreV1Api(self.api)
        try:
            core.read_namespace(DEMO_NS)
            had_demo = True
        except client.ApiException as e:
            if e.status != 404:
                raise
            had_demo = False
        profiles = (
            [
                o["metadata"]["name"]
                for o in custom.list_namespaced_custom_object(GROUP, VERSION, SYSTEM_NS, GPUPROFILE_PLURAL)[
                    "items"
                ]
            ]
            if self._served(GPUPROFILE_PLURAL)
            else []
        )
        if not had_demo and not profiles:
            return
        self.step("Clean up what the previous demo run left on this cluster")
        if had_demo and self._served(MOEDEPLOYMENT_PLURAL):
            for obj in custom.list_namespaced_custom_object(GROUP, VERSION, DEMO_NS, MOEDEPLOYMENT_PLURAL)[
                "items"
            ]:
                # The last run's operator is gone: its finalizer has nothing to clean (the placement
                # ConfigMap is owner-referenced), and it would hold the namespace's deletion forever.
                name = obj["metadata"]["name"]
                with suppress(client.ApiException):
                    custom.patch_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        DEMO_NS,
                        MOEDEPLOYMENT_PLURAL,
                        name,
                        {"metadata": {"finalizers": None}},
                    )
        if had_demo:
            with suppress(client.ApiException):
                core.delete_namespace(DEMO_NS)

            def namespace_gone() -> bool:
                try:
                    core.read_namespace(DEMO_NS)
                    return False
                except client.ApiException as e:
                    return e.status == 404

            wait_for(namespace_gone, 120, what=f"namespace {DEMO_NS} of the previous run to go")
        for name in profiles:
            with suppress(client.ApiException):
                custom.delete_namespaced_custom_object(GROUP, VERSION, SYSTEM_NS, GPUPROFILE_PLURAL, name)
        self.say(
            f"removed namespace {DEMO_NS} (MoEDeployment, placement, loads, Events) and {len(profiles)}"
            " GPUProfiles of the previous run; the cluster and the chart's release stay"
        )

    def _served(self, plural: str) -> bool:
        """Whether the CRD of ``plural`` exists (a fresh cluster has none before the chart)."""
        from kubernetes import client

        try:
            client.ApiextensionsV1Api(self.api).read_custom_resource_definition(f"{plural}.{GROUP}")
        except client.ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def helm(self, *args: str) -> str:
        from vibe.cluster.binaries import ensure

        helm = ensure(build_missing=True, components=("helm",))["helm"]
        proc = subprocess.run(
            [str(helm), *args], capture_output=True, text=True, env=self.cluster.env(), timeout=300
        )
        if proc.returncode != 0:
            raise DemoError(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
        return proc.stdout

    def install_chart(self) -> None:
        from kubernetes import client

        self.step("Install the Helm chart (CRDs, RBAC, operator Deployment, agent DaemonSet)")
        with suppress(client.ApiException):
            client.CoreV1Api(self.api).create_namespace({"metadata": {"name": DEMO_NS}})
        # GPU clusters get the `nvidia` RuntimeClass from the NVIDIA GPU Operator; the agent DaemonSet
        # uses it (like dcgm-exporter) instead of requesting a GPU. The fake cluster needs it too.
        with suppress(client.ApiException):
            client.NodeV1Api(self.api).create_runtime_class(
                {"metadata": {"name": "nvidia"}, "handler": "nvidia"}
            )
        self.helm(
            "upgrade",
            "--install",
            RELEASE,
            str(find_chart()),
            "--namespace",
            SYSTEM_NS,
            "--create-namespace",
            "--set",
            f"operator.watchNamespaces={{{DEMO_NS}}}",
            # One simulated agent process publishes all 8 nodes' GPUProfiles, which the chart's node
            # restriction (each agent writes only its own node's profile) rightly refuses.
            "--set",
            "agent.nodeRestriction.enabled=false",
            "--wait",
            "--timeout",
            "3m",
        )
        pods = client.CoreV1Api(self.api).list_namespaced_pod(SYSTEM_NS).items
        running = len([p for p in pods if p.status.phase == "Running"])
        self.say(f"release {RELEASE!r} installed in {SYSTEM_NS}: {running}/{len(pods)} pods Running")
        self.say("(those pods are kwok's stand-ins: the real operator and agent run next as local processes,")
        self.say(" each authenticated as the chart's ServiceAccount, so exactly the chart's RBAC applies;")
        self.say(" the agents' node restriction is off: one simulated agent publishes every node)")

    def kubeconfig_for(self, sa_suffix: str) -> Path:
        from vibe.cluster.identity import service_account_kubeconfig

        sa = f"{RELEASE}-{sa_suffix}"  # the chart's <fullname>-<component> for release "vibe"
        return service_account_kubeconfig(
            self.api, self.cluster.kubeconfig, SYSTEM_NS, sa, self.workdir / f"{sa}.kubeconfig"
        )

    def spawn(self, name: str, args: list[str], kubeconfig: Path) -> Process:
        log = self.workdir / f"{name}.log"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vibe", *args], stdout=fh, stderr=subprocess.STDOUT, env=env
            )
        p = Process(name, proc, log)
        self.processes.append(p)
        return p

    def start_agent(self) -> int:
        from kubernetes import client

        self.step("Start the GPU agent (simulated: measured H100 curves, SC'22 spread, one outlier)")
        port = free_port()
        agent = self.spawn(
            "agent",
            [
                "agent",
                "run",
                "--simulate",
                str(HERE / "fleet.yaml"),
                "--namespace",
                SYSTEM_NS,
                "--metrics-port",
                str(port),
                "--metrics-addr",
                "127.0.0.1",
                "--heartbeat-seconds",
                "10",
                "--kubeconfig",
                str(self.kubeconfig_for("agent")),
            ],
            self.kubeconfig_for("agent"),
        )
        custom = client.CustomObjectsApi(self.api)

        def profiles() -> list[dict[str, Any]] | None:
            agent.check()
            items = custom.list_namespaced_custom_object(GROUP, VERSION, SYSTEM_NS, GPUPROFILE_PLURAL)[
                "items"
            ]
            return items if len(items) >= NODES else None

        items = wait_for(profiles, 120, what=f"{NODES} GPUProfiles")
        table = Table(title="GPUProfiles (relative speed per GPU, 1.00 = reference H100)", box=None)
        table.add_column("node")
        for i in range(GPUS_PER_NODE):
            table.add_column(f"gpu{i}", justify="right")
        for item in sorted(items, key=lambda o: o["metadata"]["name"]):
            speeds = [
                g.get("relativeSpeed", 0.0) for g in sorted(item["spec"]["gpus"], key=lambda g: g["index"])
            ]
            table.add_row(item["metadata"]["name"], *(f"{s:.2f}" for s in speeds))
        console.print(table)
        self.say(f"agent metrics: http://127.0.0.1:{port}/metrics (log: {agent.log})")
        return port

    def start_operator(self) -> int:
        self.step("Start the operator (Kopf), as the chart's operator ServiceAccount")
        port = free_port()
        kubeconfig = self.kubeconfig_for("operator")
        op = self.spawn(
            "operator",
            [
                "operator",
                "--namespace",
                DEMO_NS,
                "--profile-namespace",
                SYSTEM_NS,
                "--peering",
                "vibe",
                "--metrics-port",
                str(port),
            ],
            kubeconfig,
        )

        def up() -> bool:
            op.check()
            try:
                metrics(port)
                return True
            except OSError:
                return False

        wait_for(up, 60, what="the operator's metrics endpoint")
        self.say(f"operator metrics: http://127.0.0.1:{port}/metrics (log: {op.log})")
        return port

    def apply_deployment(self) -> None:
        from kubernetes import client

        from vibe.placement import skewed_loads

        self.step("Apply a DeepSeek-V3 MoEDeployment (58 layers x 256 experts, EP 64, 5 slots per GPU)")
        loads = skewed_loads(58, 256, mean_tokens=512.0, seed=3)
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": LOADS_CM, "namespace": DEMO_NS},
            "data": {"loads.json": json.dumps({"loads": loads.astype(int).tolist()})},
        }
        core = client.CoreV1Api(self.api)
        try:
            core.create_namespaced_config_map(DEMO_NS, body)
        except client.ApiException as e:
            if e.status != 409:
                raise
            core.replace_namespaced_config_map(LOADS_CM, DEMO_NS, body)
        self.say(
            f"ConfigMap {LOADS_CM}: skewed loads (per-layer max/mean 2-4x, 512 tokens per expert "
            "on average: a prefill-heavy batch)"
        )
        doc = yaml.safe_load((HERE / "moedeployment.yaml").read_text())
        custom = client.CustomObjectsApi(self.api)
        with suppress(client.ApiException):
            custom.delete_namespaced_custom_object(
                GROUP, VERSION, DEMO_NS, MOEDEPLOYMENT_PLURAL, "deepseek-v3"
            )
            wait_for(lambda: not self._get_moed(), 60, what="the previous demo's MoEDeployment to go")
        custom.create_namespaced_custom_object(GROUP, VERSION, DEMO_NS, MOEDEPLOYMENT_PLURAL, doc)
        self.say("MoEDeployment deepseek-v3 created (policy vibe, minGain 2 %, no cooldown for the demo)")

    def _get_moed(self) -> dict[str, Any] | None:
        from kubernetes import client

        try:
            return client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                GROUP, VERSION, DEMO_NS, MOEDEPLOYMENT_PLURAL, "deepseek-v3"
            )
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def _condition(self, obj: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
        for c in obj.get("status", {}).get("conditions", []):
            if c["type"] == type_:
                return c
        return {}

    def _events(self, namespace: str, name: str) -> list[Any]:
        """Events about ``name`` posted since this demo started (older runs' objects had the same names)."""
        from kubernetes import client

        evs = (
            client.CoreV1Api(self.api)
            .list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
            .items
        )

        def when(e: Any) -> datetime:
            return e.last_timestamp or e.event_time or e.metadata.creation_timestamp

        return sorted((e for e in evs if when(e) >= self.started), key=when)

    def show_placement(self, op_port: int) -> None:
        from kubernetes import client

        self.step("Wait for Ready and read the placement back")
        t0 = time.monotonic()

        def ready() -> dict[str, Any] | None:
            for p in self.processes:
                p.check()
            obj = self._get_moed()
            if obj and self._condition(obj, "Ready").get("status") == "True":
                return obj
            return None

        obj = wait_for(ready, 180, what="MoEDeployment deepseek-v3 to be Ready")
        st = obj["status"]
        self.say(
            f"Ready after {time.monotonic() - t0:.1f}s: {self._condition(obj, 'Ready').get('message', '')}"
        )
        pred = st["predicted"]
        table = Table(
            title="Predicted MoE time per forward step (58 layers), from status.predicted", box=None
        )
        for col in ("policy", "step time (ms)", "imbalance", "vs bound", "vs token-balanced"):
            table.add_column(col, justify="right")
        bound = pred["lowerBoundSeconds"]
        rows = [(b["policy"], b["stepTimeSeconds"], b["imbalance"]) for b in pred.get("baselines", [])]
        if not rows and pred.get("baseline"):
            b = pred["baseline"]
            rows = [(b["policy"], b["stepTimeSeconds"], b["imbalance"])]
        rows.append((f"{obj['spec']['policy']} (in service)", pred["stepTimeSeconds"], pred["imbalance"]))
        base = next((t for p, t, _ in rows if p == "token-balanced"), None)
        for policy, t, imb in rows:
            table.add_row(
                policy,
                f"{t * 1e3:.3f}",
                f"{imb:.3f}",
                f"{t / bound - 1:+.2%}",
                f"{1 - t / base:+.2%}" if base else "",
            )
        table.add_row("lower bound", f"{bound * 1e3:.3f}", "", "", "")
        console.print(table)
        self.say(simulated_impact())
        cm = client.CoreV1Api(self.api).read_namespaced_config_map(
            st.get("configMap", "deepseek-v3-placement"), DEMO_NS
        )
        ann = cm.metadata.annotations or {}
        self.say(
            f"ConfigMap {cm.metadata.name}: keys {sorted(cm.data)}; generation "
            f"{ann.get(contract.ANNOTATION_PLACEMENT_GENERATION)}; "
            f"hash {ann.get(contract.ANNOTATION_CONTENT_HASH, '')[:19]}…"
        )
        m = metrics(op_port)
        self.say(
            "operator metrics: vibe_placement_predicted_step_seconds="
            f"{metric(m, 'vibe_placement_predicted_step_seconds', name='deepseek-v3'):.6f}, "
            f"vibe_placement_gain_vs_baseline_ratio="
            f"{metric(m, 'vibe_placement_gain_vs_baseline_ratio', name='deepseek-v3'):.4f}"
        )

    def throttle_and_replace(self, agent_port: int, op_port: int) -> None:
        from kubernetes import client

        self.step("One GPU throttles: gpu-node-3 GPU 2 goes 1.4x slower (the agent's drift schedule)")
        custom = client.CustomObjectsApi(self.api)
        before = self._get_moed() or {}
        gen0 = before.get("status", {}).get("placementGeneration", 0)
        self.say("waiting for the agent's drift detector (EWMA with hysteresis on the SM clock) to flag it…")

        def drifted() -> dict[str, Any] | None:
            for p in self.processes:
                p.check()
            prof = custom.get_namespaced_custom_object(
                GROUP, VERSION, SYSTEM_NS, GPUPROFILE_PLURAL, "gpu-node-3"
            )
            gpu = next(g for g in prof["spec"]["gpus"] if g["index"] == 2)
            return gpu if gpu.get("drift", {}).get("state") == "Drifted" else None

        gpu = wait_for(drifted, 240, what="GPUProfile gpu-node-3 to report GPU 2 Drifted")
        d = gpu["drift"]
        self.say(
            f"GPUProfile gpu-node-3 GPU 2: Drifted, timeScale {d.get('timeScale', 0):.2f} "
            f"({d.get('reason', '')})"
        )
        for ev in self._events(SYSTEM_NS, "gpu-node-3")[-2:]:
            self.say(f"  Event {ev.type} {ev.reason}: {ev.message}")
        am = metrics(agent_port)
        self.say(
            f"agent metrics: vibe_gpu_drift_events_total{{node=gpu-node-3,gpu=2}}="
            f"{metric(am, 'vibe_gpu_drift_events_total', node='gpu-node-3', gpu='2'):.0f}, "
            f"vibe_gpu_relative_speed={metric(am, 'vibe_gpu_relative_speed', node='gpu-node-3', gpu='2'):.2f}"
        )

        self.say("waiting for the operator to re-evaluate the placement…")

        def decided() -> dict[str, Any] | None:
            for p in self.processes:
                p.check()
            obj = self._get_moed() or {}
            st = obj.get("status", {})
            if st.get("placementGeneration", 0) > gen0:
                return obj
            if self._condition(obj, "Drifted").get("status") == "True":
                return obj
            return None

        obj = wait_for(decided, 120, what="the operator's drift decision")
        st = obj["status"]
        last = st.get("lastReplacement", {})
        if last.get("time") and d.get("since"):
            lag = datetime.fromisoformat(last["time"].replace("Z", "+00:00")) - datetime.fromisoformat(
                d["since"].replace("Z", "+00:00")
            )
            self.say(
                f"the operator re-planned {lag.total_seconds():.0f}s after the GPUProfile reported the drift"
            )
        if st.get("placementGeneration", 0) > gen0:
            self.say(
                f"[green]re-placed[/green]: generation {gen0} → {st['placementGeneration']}, "
                f"{last.get('moves')} slot moves, predicted gain {last.get('gain', 0):.2%} "
                f"({last.get('message', '')})"
            )
        else:
            c = self._condition(obj, "Drifted")
            self.say(f"not re-placed: Drifted={c.get('status')} {c.get('reason')}: {c.get('message')}")
        for ev in self._events(DEMO_NS, "deepseek-v3")[-3:]:
            self.say(f"  Event {ev.type} {ev.reason}: {ev.message}")
        m = metrics(op_port)
        self.say(
            "operator metrics: "
            f"vibe_placement_moves_total={metric(m, 'vibe_placement_moves_total', name='deepseek-v3'):.0f}, "
            f"vibe_drift_events_total={metric(m, 'vibe_drift_events_total'):.0f}, "
            f"vibe_placement_generation={metric(m, 'vibe_placement_generation', name='deepseek-v3'):.0f}"
        )


def simulated_impact() -> str:
    """One line from ``vibe simulate`` on the demo's own inputs (its fleet file, loads and slots)."""
    try:
        from vibe.agent.simulate import load_fleet
        from vibe.placement import Fleet, GPUCurve, reference_curve, skewed_loads
        from vibe.simulate.impact import impact_line

        t, s = reference_curve(7168, 2048, "fp8")
        sim = load_fleet(HERE / "fleet.yaml")
        # each GPU slowed as the simulated agent slows it (its floorShare: by default in compute only, as
        # measured under a power cap, not at its memory-bound floor)
        gpus = [GPUCurve(f"{n}/{g.index}", n, t, g.slowed(s)) for n, gs in sim.nodes.items() for g in gs]
        return impact_line(skewed_loads(58, 256, mean_tokens=512.0, seed=3), Fleet(tuple(gpus)), 5)
    except Exception as e:  # the figure is a bonus: never let it stop the demo
        return f"simulated serving impact unavailable ({type(e).__name__}: {e})"


@contextmanager
def workdir(cluster_name: str) -> Iterator[Path]:
    from vibe.cluster.paths import state_dir

    path = state_dir(cluster_name) / "demo"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path


def demo(
    cluster: Annotated[str, typer.Option(help="Name of the local cluster to run it on.")] = "vibe",
    keep: Annotated[
        bool, typer.Option("--keep/--down", help="Leave the cluster up afterwards, or take it down.")
    ] = True,
) -> None:
    """Run the end-to-end demo on the local control plane (builds it the first time).

    Brings up the cluster with 8 fake nodes x 8 GPUs, installs the chart, runs the operator and a
    simulated agent as the chart's ServiceAccounts, places DeepSeek-V3, throttles one GPU and shows
    the drift being detected and the re-placement, all read back from the API server and /metrics.
    """
    try:
        with workdir(cluster) as wd:
            Demo(cluster, wd, keep=keep).run()
    except (DemoError, TimeoutError) as e:
        fail("DemoFailed", f"demo failed: {e}", command=COMMAND)
    except Exception as e:  # a bug or an API error: one line, and where to look, not a traceback
        fail(
            "DemoFailed",
            f"demo failed: {type(e).__name__}: {e} (component logs are under the demo's work directory; "
            "`vibe cluster down` cleans up)",
            command=COMMAND,
        )


def _vibe_command() -> str:
    """How this shell can run `vibe`: the name if it is on PATH, else the path beside this Python."""
    beside = Path(sys.executable).parent / "vibe"
    if shutil.which("vibe") or not beside.exists():
        return "vibe"
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)
