"""`vibe serving ...`: the commands serving pods run (the root CLI mounts ``app`` as ``serving``).

* ``init`` -- init container: mounted placement ConfigMap -> the engine's files (``--engine-file NAME=PATH``
  per format of ``vibe.engines``: SGLang's ``--init-expert-location`` JSON, TensorRT-LLM's load-balancer
  YAML and engine-args snippet, EPLB tensors), checked against the engine's EP size, slots and layers;
* ``watch`` -- sidecar: notice a newer placement and restart / call an endpoint / report;
* ``export-loads`` -- job or sidecar: an engine's statistics (SGLang's recorder dump, TensorRT-LLM's
  ``EXPERT_STATISTIC_PATH``) -> the load ConfigMap.

Heavy imports (the Kubernetes client, torch) stay inside the commands. Every expected failure prints one
line ``vibe serving: <Reason>: <message>``, writes it to ``/dev/termination-log`` (what ``kubectl
describe pod`` shows for a failed init container) and exits 1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer

from vibe import api as api_names
from vibe.clikit import ContextOpt, KubeconfigOpt, VerboseOpt, fail, namespace_option, setup_logging
from vibe.engines import FormatName
from vibe.kubeclient import as_dict
from vibe.serving.errors import ServingError, engine_errors

app = typer.Typer(
    help="Serving-pod helpers: placement file for the engine, update sidecar, expert-load export.",
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts show [layers][experts] shapes literally
)
log = logging.getLogger("vibe.serving")

COMMAND = "vibe serving"
NAMESPACE = namespace_option("Namespace of the ConfigMaps (in a pod: POD_NAMESPACE).", envvar="POD_NAMESPACE")


def _fail(e: ServingError) -> NoReturn:
    """``vibe serving: <Reason>: <message>`` on stderr and in the termination log; exit 1."""
    fail(e.reason, e.message, command=COMMAND)


def _settings(
    ep_size: int,
    redundant_experts: int,
    model_config: str | Path | None,
    num_experts: int | None,
    num_layers: int | None,
    first_moe_layer: int | None,
    architecture: str | None = None,
) -> Any:
    from vibe.engines.settings import EngineSettings, model_layout

    with engine_errors():
        layout: dict[str, Any] = model_layout(model_config) if model_config else {}
        return EngineSettings(
            architecture=architecture or layout.get("architecture"),
            ep_size=ep_size,
            redundant_experts=redundant_experts,
            num_experts=num_experts if num_experts is not None else layout.get("num_experts"),
            num_layers=num_layers if num_layers is not None else layout.get("num_layers"),
            first_moe_layer=(
                first_moe_layer if first_moe_layer is not None else layout.get("first_moe_layer", 0)
            ),
        )


def _outputs(pairs: list[str], **shorthands: Path | None) -> dict[str, str]:
    """``--engine-file NAME=PATH`` pairs plus the ``--sglang-out``-style shorthands -> format -> path."""
    from vibe.engines import get

    out = {name: str(path) for name, path in shorthands.items() if path is not None}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ServingError("InvalidArgument", f"--engine-file takes NAME=PATH, got {pair!r}")
        with engine_errors():
            out[get(name).name] = path
    return out


def _expected(value: str | None) -> tuple[int, str | None] | None:
    """``--expect-generation``: the pod template's annotation, ``N`` or ``N/<MoEDeployment uid>``."""
    from vibe import contract

    try:
        return contract.parse_template_value(value, "--expect-generation")
    except ValueError as e:
        raise ServingError("InvalidArgument", str(e)) from None


# Options shared by init and watch (the engine as launched).
EpSizeOpt = Annotated[
    int, typer.Option("--ep-size", help="Expert-parallel size (SGLang: --ep-size; = --tp-size with DeepEP).")
]
RedundantOpt = Annotated[
    int,
    typer.Option(
        "--redundant-experts",
        help="Slots beyond one per expert: SGLang's --ep-num-redundant-experts, TensorRT-LLM's"
        " num_slots - num_experts.",
    ),
]
ModelConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--model-config",
        dir_okay=False,
        metavar="CONFIG.json",
        help="The model's config.json: layers, experts, first_k_dense_replace.",
    ),
]
NumExpertsOpt = Annotated[
    int | None, typer.Option("--num-experts", help="Routed experts (overrides --model-config).")
]
NumLayersOpt = Annotated[
    int | None,
    typer.Option(
        "--num-layers", help="Layers the engine counts, dense included (SGLang: num_hidden_layers)."
    ),
]
FirstMoeOpt = Annotated[
    int | None, typer.Option("--first-moe-layer", help="Dense layers before the first MoE layer.")
]
ArchitectureOpt = Annotated[
    str | None,
    typer.Option(
        "--architecture",
        help="The model's architecture (config.json architectures[0]; default: from --model-config). SGLang"
        " applies a placement only to architectures with an expert-location hook: others are refused.",
    ),
]
PlacementDirOpt = Annotated[
    Path,
    typer.Option("--placement-dir", file_okay=False, help="Mount path of the <name>-placement ConfigMap."),
]
StateDirOpt = Annotated[
    Path,
    typer.Option("--state-dir", file_okay=False, help="emptyDir shared by init and sidecar (applied state)."),
]
FollowGpusOpt = Annotated[
    bool,
    typer.Option(
        "--follow-gpus/--no-follow-gpus",
        help="Move each GPU's slots to the engine rank running on it (LeaderWorkerSet/StatefulSet; RBAC).",
    ),
]
GpusPerPodOpt = Annotated[
    int, typer.Option("--gpus-per-pod", help="GPUs each pod drives (all of its node's, in index order).")
]
GroupSizeOpt = Annotated[
    int | None,
    typer.Option("--group-size", help="Pods per engine group (default: from the LWS/StatefulSet)."),
]
NamespaceOpt = Annotated[str | None, NAMESPACE]
MOUNT = Path("/etc/vibe/placement")
STATE_DIR = Path("/var/run/vibe")


@app.command("init")
def init_cmd(
    ep_size: EpSizeOpt,
    redundant_experts: RedundantOpt = 0,
    placement_dir: PlacementDirOpt = MOUNT,
    sglang_out: Annotated[
        Path | None,
        typer.Option(
            "--sglang-out",
            dir_okay=False,
            metavar="FILE.json",
            help="Write SGLang's --init-expert-location JSON here.",
        ),
    ] = None,
    eplb_out: Annotated[
        Path | None,
        typer.Option(
            "--eplb-out",
            dir_okay=False,
            metavar="FILE.json|FILE.pt",
            help="Write EPLB tensors here (.json, or .pt with torch).",
        ),
    ] = None,
    trtllm_out: Annotated[
        Path | None,
        typer.Option(
            "--trtllm-out",
            dir_okay=False,
            metavar="FILE.yaml",
            help="Write TensorRT-LLM's load-balancer YAML here (moe_config.load_balancer), and"
            " <stem>-extra-engine-args.yaml beside it.",
        ),
    ] = None,
    engine_file: Annotated[
        list[str] | None,
        typer.Option(
            "--engine-file",
            metavar="NAME=PATH",
            help="Write format NAME's engine file(s) to PATH (repeatable; any format of vibe.engines that"
            " an engine reads): sglang, eplb, trtllm (the load-balancer YAML, and"
            " <stem>-extra-engine-args.yaml beside it).",
        ),
    ] = None,
    state_dir: StateDirOpt = STATE_DIR,
    model_config: ModelConfigOpt = None,
    num_experts: NumExpertsOpt = None,
    num_layers: NumLayersOpt = None,
    first_moe_layer: FirstMoeOpt = None,
    architecture: ArchitectureOpt = None,
    expect_generation: Annotated[
        str | None,
        typer.Option(
            "--expect-generation",
            envvar="VIBE_EXPECT_GENERATION",
            metavar="GENERATION",
            help="Generation this pod was rolled out for (Downward API: the template annotation); "
            "empty = any.",
        ),
    ] = None,
    wait_seconds: Annotated[
        float, typer.Option("--wait-seconds", help="How long to wait for the volume to catch up.")
    ] = 180.0,
    roll_forward: Annotated[
        bool,
        typer.Option(
            "--roll-forward/--no-roll-forward",
            help="If the volume is already newer than --expect-generation, bump the workload (needs RBAC).",
        ),
    ] = False,
    follow_gpus: FollowGpusOpt = False,
    gpus_per_pod: GpusPerPodOpt = 8,
    group_size: GroupSizeOpt = None,
    engine_gpus_out: Annotated[
        Path | None,
        typer.Option(
            "--engine-gpus-out",
            dir_okay=False,
            help="With --follow-gpus: also write the engine ranks' GPUs here (vLLM: VIBE_VLLM_ENGINE_GPUS,"
            " so vibe's EPLB policy follows GPUs at every rebalance).",
        ),
    ] = None,
    verbose: VerboseOpt = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Init container: write the engine's placement files from the mounted ConfigMap, or fail clearly."""
    setup_logging(verbose)
    from vibe.serving import emit

    try:
        settings = _settings(
            ep_size, redundant_experts, model_config, num_experts, num_layers, first_moe_layer, architecture
        )
        expected = _expected(expect_generation)
        on_newer = _roll_forward_hook(kubeconfig, context) if roll_forward else None
        outputs = _outputs(engine_file or [], sglang=sglang_out, eplb=eplb_out, trtllm=trtllm_out)
        if engine_gpus_out is not None and not follow_gpus:
            raise ServingError("InvalidArgument", "--engine-gpus-out needs --follow-gpus")
        applied = emit.run_init(
            str(placement_dir),
            settings,
            outputs,
            state_dir=str(state_dir),
            expect_generation=expected,
            wait_seconds=wait_seconds,
            on_newer=on_newer,
            engine_gpus=(
                (lambda: _engine_gpus(None, gpus_per_pod, group_size, kubeconfig, context, engine_gpus_out))
                if follow_gpus
                else None
            ),
        )
    except ServingError as e:
        _fail(e)
    typer.echo(json.dumps({"placementGeneration": applied.generation, "dataHash": applied.data_hash}))


def _engine_gpus(
    api: Any,
    gpus_per_pod: int,
    group_size: int | None,
    kubeconfig: Path | None = None,
    context: str | None = None,
    out: Path | None = None,
) -> list[tuple[str, int]]:
    from vibe.serving import kube, rankmap

    pod, ns = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not pod or not ns:
        raise ServingError("InvalidArgument", "--follow-gpus needs POD_NAME and POD_NAMESPACE (Downward API)")
    try:
        api = api or kube.client(kubeconfig, context)
    except Exception as e:
        raise ServingError("ApplyFailed", f"--follow-gpus needs the Kubernetes API: {e}") from None
    gpus = rankmap.engine_gpus(api, ns, pod, gpus_per_pod, group_size)
    log.info("engine ranks run on %s", ", ".join(f"{n}/{i}" for n, i in gpus[::gpus_per_pod]))
    if out is not None:
        from vibe.serving import vllm_eplb

        vllm_eplb.write_engine_gpus(out, gpus)
    return gpus


def _roll_forward_hook(kubeconfig: Path | None = None, context: str | None = None) -> Any:
    from vibe.serving import kube

    def bump(generation: int, uid: str | None = None) -> None:
        pod, ns = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if not pod or not ns:
            log.warning("cannot roll forward: POD_NAME/POD_NAMESPACE not set (Downward API)")
            return
        try:
            api = kube.client(kubeconfig, context)
            kind, name = kube.discover_workload(api, ns, pod)
            if kube.restart_workload(api, ns, kind, name, generation, uid):
                log.info("rolled %s/%s forward to placement generation %d", kind, name, generation)
        except ServingError as e:
            log.warning("could not roll the workload forward: %s", e.message)

    return bump


@app.command("watch")
def watch_cmd(
    ep_size: EpSizeOpt,
    redundant_experts: RedundantOpt = 0,
    source: Annotated[
        Literal["file", "api"],
        typer.Option("--source", help="file (the mounted volume) or api (the ConfigMap object)."),
    ] = "file",
    placement_dir: PlacementDirOpt = MOUNT,
    configmap: Annotated[
        str | None, typer.Option("--configmap", help="<name>-placement (for --source api).")
    ] = None,
    namespace: NamespaceOpt = None,
    state_dir: StateDirOpt = STATE_DIR,
    documents: Annotated[
        Literal[FormatName, "both"],
        typer.Option("--documents", help="Format to fit and hand to the policy ('both' = sglang and eplb)."),
    ] = "sglang",
    policy: Annotated[
        Literal["restart", "http", "eplb", "report"],
        typer.Option("--policy", help="What to do with a newer placement (spec.serving.onUpdate wins)."),
    ] = "report",
    moedeployment: Annotated[
        str | None,
        typer.Option(
            "--moedeployment", help="Read the policy from this MoEDeployment's spec.serving each time."
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            metavar="KIND/NAME",
            help="Workload to restart (default: this pod's owner, via POD_NAME).",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Endpoint for the http policy: the only origin the sidecar posts to (spec.serving.endpoint"
            " may choose a path on it, never another host).",
        ),
    ] = None,
    http_document: Annotated[
        FormatName, typer.Option("--http-document", help="Format whose document the http policy POSTs.")
    ] = "sglang",
    token_file: Annotated[
        Path | None, typer.Option("--token-file", dir_okay=False, help="Bearer token for the http policy.")
    ] = None,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between looks.")] = 10.0,
    once: Annotated[bool, typer.Option("--once", help="One look, then exit (tests, debugging).")] = False,
    model_config: ModelConfigOpt = None,
    num_experts: NumExpertsOpt = None,
    num_layers: NumLayersOpt = None,
    first_moe_layer: FirstMoeOpt = None,
    architecture: ArchitectureOpt = None,
    follow_gpus: FollowGpusOpt = False,
    gpus_per_pod: GpusPerPodOpt = 8,
    group_size: GroupSizeOpt = None,
    verbose: VerboseOpt = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Sidecar: apply newer placements with the MoEDeployment's policy; never an older or half-written one."""
    setup_logging(verbose)
    from vibe.serving import sidecar

    try:
        settings = _settings(
            ep_size, redundant_experts, model_config, num_experts, num_layers, first_moe_layer, architecture
        )
        docs = ("sglang", "eplb") if documents == "both" else (documents,)
        needs_api = source == "api" or policy == "restart" or moedeployment is not None
        api = _watch_api(kubeconfig, context, needs_api, namespace)
        if source == "api":
            if not configmap or not namespace:
                raise ServingError("InvalidArgument", "--source api needs --configmap and --namespace")
            observe = sidecar.observe_api(api, namespace, configmap)
        else:
            observe = sidecar.observe_volume(str(placement_dir))
        report = _reporter(api, namespace, configmap)
        token = token_file.read_text(encoding="utf-8").strip() if token_file else None
        pick = _policy_picker(
            api, namespace, moedeployment, policy, url, target, http_document, token, report
        )
        gpus = _engine_gpus(api, gpus_per_pod, group_size, kubeconfig, context) if follow_gpus else None
        watcher = sidecar.Watcher(observe, settings, docs, pick, report, str(state_dir), gpus)
    except ServingError as e:
        _fail(e)
    if once:
        typer.echo(watcher.step())
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log.info("watching the placement (%s) every %.0fs", source, interval)
    watcher.run(interval, stop)


def _watch_api(kubeconfig: Path | None, context: str | None, needs_api: bool, namespace: str | None) -> Any:
    """The sidecar's API client, or None where it has no API access and needs none (reports then go
    to the log only)."""
    from vibe.serving import kube

    api = None
    try:
        api = kube.client(kubeconfig, context)
    except Exception as e:
        if needs_api:
            raise ServingError("ApplyFailed", f"no Kubernetes API access: {e}") from None
        log.info("no Kubernetes API access (%s): reports go to the log only", e)
    if api is not None and not namespace:
        raise ServingError("InvalidArgument", "--namespace (or POD_NAMESPACE) is needed with API access")
    return api


def _reporter(api: Any, namespace: str | None, configmap: str | None) -> Any:
    from vibe.serving import kube

    pod = os.environ.get("POD_NAME")
    if pod:
        involved = {"kind": "Pod", "name": pod, "api_version": "v1"}
        if os.environ.get("POD_UID"):
            involved["uid"] = os.environ["POD_UID"]
    elif configmap:
        involved = {"kind": "ConfigMap", "name": configmap, "api_version": "v1"}
    else:
        involved = None

    def report(type_: str, reason: str, message: str) -> None:
        (log.warning if type_ == "Warning" else log.info)("%s: %s", reason, message)
        if api is not None and namespace and involved:
            kube.emit_event(api, namespace, involved, reason, message, type_)

    return report


def _policy_picker(
    api: Any,
    namespace: str | None,
    moedeployment: str | None,
    policy: str,
    url: str | None,
    target: str | None,
    http_document: str,
    token: str | None,
    report: Any,
) -> Any:
    """A function returning the policy to use now: MoEDeployment ``spec.serving`` first, flags second."""
    from vibe.serving import kube, update_policies

    def restart_for(kind_name: str | None) -> tuple[Any, str]:
        if api is None or not namespace:
            return None, ""
        if kind_name:
            kind, _, name = kind_name.partition("/")
            if not name:
                raise ServingError("InvalidArgument", f"--target must be Kind/name, got {kind_name!r}")
        else:
            pod = os.environ.get("POD_NAME")
            if not pod:
                raise ServingError(
                    "InvalidArgument", "policy 'restart' needs --target or POD_NAME (Downward API)"
                )
            kind, name = kube.discover_workload(api, namespace, pod)
        return (
            lambda gen, uid=None: kube.restart_workload(api, namespace, kind, name, gen, uid)
        ), f"{kind}/{name}"

    said: set[str] = set()

    def pick() -> Any:
        chosen, endpoint = policy, url
        if moedeployment and api is not None and namespace:
            serving = _moedeployment_serving(api, namespace, moedeployment)
            chosen = serving.get("onUpdate", chosen)
            if chosen == "http":
                # Where the pod sends its token is the pod's --url; the spec may only pick a path on it.
                endpoint, refused = update_policies.resolve_endpoint(url, serving.get("endpoint"))
                if refused and refused not in said:
                    said.add(refused)
                    report("Warning", "PlacementEndpointRefused", f"MoEDeployment {moedeployment}: {refused}")
        restart, label = restart_for(target) if chosen == "restart" else (None, "")
        return update_policies.make_policy(chosen, report, restart, label, endpoint, http_document, token)

    return pick


def _moedeployment_serving(api: Any, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client as k8s

    try:
        obj = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
            api_names.GROUP, api_names.VERSION, namespace, api_names.MOEDEPLOYMENT_PLURAL, name
        )
    except k8s.ApiException as e:
        raise ServingError(
            "ApplyFailed", f"reading MoEDeployment {namespace}/{name}: HTTP {e.status}"
        ) from None
    serving = (as_dict(obj).get("spec") or {}).get("serving") or {}
    return serving if isinstance(serving, dict) else {}


@app.command("export-loads")
def export_loads_cmd(
    configmap: Annotated[
        str | None, typer.Option("--configmap", help="Load ConfigMap to write (server-side apply).")
    ] = None,
    key: Annotated[
        str, typer.Option("--key", help="Key in the ConfigMap (spec.workload.configMapRef.key).")
    ] = "loads.json",
    namespace: NamespaceOpt = None,
    dump: Annotated[
        Path | None,
        typer.Option(
            "--dump", dir_okay=False, metavar="DUMP.pt|DUMP.json", help="An SGLang dump (.pt) or JSON export."
        ),
    ] = None,
    stats_dir: Annotated[
        Path | None,
        typer.Option(
            "--stats-dir",
            file_okay=False,
            help="A statistics directory instead of --dump: TensorRT-LLM's EXPERT_STATISTIC_PATH"
            " (meta_info.json, rank<R>.safetensors); implies --engine trtllm.",
        ),
    ] = None,
    engine: Annotated[
        FormatName | None,
        typer.Option(
            "--engine",
            help="Whose statistics: sglang (default with --dump), trtllm (with --stats-dir) or vllm"
            " (the EPLB window file vibe's vLLM plugin writes, with --dump).",
        ),
    ] = None,
    assignment: Annotated[
        Path | None,
        typer.Option(
            "--assignment",
            dir_okay=False,
            metavar="LOAD_BALANCER.yaml",
            help="trtllm: the load-balancer file the engine runs with (vibe serving init wrote it); its"
            " slots fold the per-slot counts back to experts.",
        ),
    ] = None,
    engine_url: Annotated[
        str | None,
        typer.Option(
            "--engine-url", help="Poll the engine's recorder instead (e.g. http://127.0.0.1:30000)."
        ),
    ] = None,
    recorder_dir: Annotated[
        Path | None,
        typer.Option(
            "--recorder-dir",
            file_okay=False,
            help="The engine's SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR (shared emptyDir).",
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between dumps when polling the engine.")
    ] = 600.0,
    once: Annotated[bool, typer.Option("--once", help="With --engine-url: one window, then exit.")] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="With --dump: publish the file again each time it changes, every --interval seconds"
            " (vLLM: the EPLB window vibe's policy plugin rewrites at each rebalance).",
        ),
    ] = False,
    min_passes: Annotated[
        int, typer.Option("--min-passes", help="Skip windows with fewer forward passes (idle engine).")
    ] = 100,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Forward passes to divide by (default: counted).")
    ] = None,
    model_config: ModelConfigOpt = None,
    first_moe_layer: FirstMoeOpt = None,
    moe_layers: Annotated[
        int | None, typer.Option("--moe-layers", help="Keep this many trailing layers.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", dir_okay=False, metavar="LOADS.json", help="Also write the loads JSON here."
        ),
    ] = None,
    keep_dumps: Annotated[
        bool, typer.Option("--keep-dumps", help="Keep processed .pt files (default: delete).")
    ] = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Job/sidecar: turn an engine's statistics into the MoEDeployment's load ConfigMap."""
    setup_logging(verbose)
    from vibe.engines.settings import model_layout
    from vibe.serving import kube
    from vibe.serving.export import Exporter

    try:
        engine, dump = _export_source(
            dump,
            stats_dir,
            engine_url,
            recorder_dir,
            engine,
            follow=follow,
            publishes=bool(configmap or output),
        )
        if model_config and first_moe_layer is None and moe_layers is None and engine == "sglang":
            with engine_errors():
                first_moe_layer = model_layout(model_config)["first_moe_layer"]
        exporter = Exporter(
            output=output,
            configmap=configmap,
            namespace=namespace,
            key=key,
            api=kube.client(kubeconfig, context) if configmap else None,
            steps=steps,
            first_moe_layer=first_moe_layer,
            moe_layers=moe_layers,
            min_passes=min_passes,
            engine=engine,
            assignment=assignment,
        )
        if dump is not None and follow:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            exporter.follow_file(dump, interval=interval, stop=stop)
            return
        if dump is not None:
            exporter.publish(dump)
            return
        assert engine_url is not None and recorder_dir is not None
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        exporter.follow(
            engine_url, recorder_dir, interval=interval, stop=stop, once=once, keep_dumps=keep_dumps
        )
    except ServingError as e:
        _fail(e)


def _export_source(
    dump: Path | None,
    stats_dir: Path | None,
    engine_url: str | None,
    recorder_dir: Path | None,
    engine: FormatName | None,
    *,
    follow: bool,
    publishes: bool,
) -> tuple[FormatName, Path | None]:
    """The engine and the file or folder to read (None: poll ``--engine-url``), once the source flags
    are checked: exactly one source, and a place to publish to."""
    if sum(x is not None for x in (dump, stats_dir, engine_url)) != 1:
        raise ServingError("InvalidArgument", "give exactly one of --dump, --stats-dir and --engine-url")
    if follow and dump is None:
        raise ServingError("InvalidArgument", "--follow re-reads a --dump file; give --dump")
    engine = engine or ("trtllm" if stats_dir is not None else "sglang")
    dump = dump if dump is not None else stats_dir
    if engine_url and not recorder_dir:
        raise ServingError("InvalidArgument", "--engine-url needs --recorder-dir (where rank 0 writes dumps)")
    if not publishes:
        raise ServingError("InvalidArgument", "give --configmap and/or --output")
    if engine_url and engine != "sglang":
        raise ServingError("InvalidArgument", "--engine-url polls SGLang's recorder; give --dump for others")
    return engine, dump
