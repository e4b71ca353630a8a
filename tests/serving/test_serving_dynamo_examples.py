"""examples/dynamo (DynamoGraphDeployments for SGLang and TensorRT-LLM) and examples/llm-d (a kustomize
patch of an llm-d LeaderWorkerSet for vLLM): self-consistent, accepted by vibe's own CLI, and accepted by
the API server.

What checks what:

* the engine flags, vibe's flags and the MoEDeployment agree (EP size, slots, layers, the file the init
  container writes is the file the engine reads, the ConfigMap is ``<moedeployment>-placement``);
* every ``vibe ...`` command line in the examples parses with vibe's real CLI (an unknown or misspelt
  flag fails here, not in a pod);
* against the local control plane, with strict field validation (an unknown field is an error, not
  silently pruned): the LeaderWorkerSets with LeaderWorkerSet's own CRD (``tests/upstream_crds.py``);
  every DGD component's ``podTemplate`` as a core/v1 PodTemplate (Dynamo's CRD embeds
  ``corev1.PodTemplateSpec`` there, and the API server's pod validation is stricter than a CRD schema);
  the MoEDeployments with vibe's CRD; and the example's Role, used as a real ServiceAccount, may patch
  its DynamoGraphDeployment and nothing Dynamo generates.

Dynamo's own DGD CRD is not applied: it cannot be had through the module proxy (``tests/upstream_crds.py``
says why). The DGD-level fields are checked against the rules of Dynamo's v1beta1 Go types instead, each
named with its source file (ai-dynamo/dynamo ``deploy/operator/api/v1beta1/``).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from serving_helpers import flags

from vibe import api
from vibe.contract import ANNOTATION_PLACEMENT_GENERATION

ROOT = Path(__file__).resolve().parents[2]
DYNAMO = ROOT / "examples" / "dynamo"
DGD_FILES = {"sglang": DYNAMO / "dgd-sglang.yaml", "trtllm": DYNAMO / "dgd-trtllm.yaml"}
# Dynamo 1.6.1's flag names (the ai-dynamo wheel: dynamo/trtllm/backend_args.py; dynamo.sglang passes
# SGLang's own server flags through).
ENGINE_FILE_FLAG = {"sglang": "--init-expert-location", "trtllm": "--extra-engine-args"}
EP_FLAG = {"sglang": "--ep-size", "trtllm": "--expert-parallel-size"}


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def moedeployments() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in load(DYNAMO / "moedeployment.yaml")}


def engine_component(dgd: dict) -> dict:
    (comp,) = [c for c in dgd["spec"]["components"] if c.get("type") in api.DGD_WORKER_TYPES]
    return comp


def containers(comp: dict) -> dict[str, dict]:
    spec = comp["podTemplate"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def engine_args(container: dict) -> dict[str, str]:
    return flags([*container.get("command", []), *container.get("args", [])])


@pytest.fixture(scope="module", params=sorted(DGD_FILES))
def example(request: pytest.FixtureRequest) -> tuple[str, dict]:
    (dgd,) = load(DGD_FILES[request.param])
    return request.param, dgd


# ---- the rules of Dynamo's v1beta1 types the examples must keep


def test_dgd_follows_dynamos_v1beta1_rules(example: tuple[str, dict]) -> None:
    backend, dgd = example
    assert dgd["apiVersion"] == f"{api.DGD_API_GROUP}/{api.DGD_API_VERSION}" and dgd["kind"] == api.DGD_KIND
    # dynamographdeployment_types.go: backendFramework enum sglang;vllm;trtllm.
    assert dgd["spec"]["backendFramework"] == backend
    names = [c["name"] for c in dgd["spec"]["components"]]
    assert len(set(names)) == len(names)  # unique within spec.components
    for comp in dgd["spec"]["components"]:
        # dynamocomponentdeployment_types.go: name pattern and length; type one of the ComponentTypes;
        # a new component's podTemplate has a container "main" with an image (MainContainerName).
        assert (
            re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?", comp["name"]) and len(comp["name"]) <= 63
        )
        assert comp["type"] in ("frontend", "worker", "prefill", "decode", "planner", "epp")
        main = [c for c in comp["podTemplate"]["spec"]["containers"] if c["name"] == "main"]
        assert len(main) == 1 and main[0]["image"]
        assert set(comp) <= {"name", "type", "replicas", "multinode", "podTemplate", "sharedMemorySize"}
    assert set(engine_component(dgd)["multinode"]) == {"nodeCount"}


def test_engine_and_vibe_agree(example: tuple[str, dict]) -> None:
    backend, dgd = example
    comp = engine_component(dgd)
    c = containers(comp)
    engine, init, watch = (
        engine_args(c["main"]),
        flags(c["vibe-placement"]["command"]),
        flags(c["vibe-watch"]["command"]),
    )
    volumes = {v["name"]: v for v in comp["podTemplate"]["spec"]["volumes"]}
    moed = moedeployments()[volumes["placement"]["configMap"]["name"].removesuffix("-placement")]
    gpus, model = moed["spec"]["gpus"], moed["spec"]["model"]

    ep = int(engine[EP_FLAG[backend]])
    assert ep == int(init["--ep-size"]) == int(watch["--ep-size"]) == gpus["count"]
    assert comp["multinode"]["nodeCount"] * int(init["--gpus-per-pod"]) == ep
    assert int(c["main"]["resources"]["limits"]["nvidia.com/gpu"]) == int(init["--gpus-per-pod"])
    assert int(init["--redundant-experts"]) == int(watch["--redundant-experts"])
    assert model["experts"] + int(init["--redundant-experts"]) == gpus["slotsPerGPU"] * gpus["count"]
    assert int(init["--num-layers"]) - int(init["--first-moe-layer"]) == model["layers"]
    assert "--follow-gpus" in init and "--follow-gpus" in watch  # Grove ranks: ldr 0, wkr i -> i + 1
    assert volumes["placement"]["configMap"]["name"] == f"{moed['metadata']['name']}-placement"
    assert moed["spec"]["serving"]["onUpdate"] == "restart"
    # The restart targets this DGD's engine component, never what Dynamo generates from it.
    assert watch["--target"] == f"{api.DGD_KIND}/{dgd['metadata']['name']}/{comp['name']}"
    assert watch["--moedeployment"] == moed["metadata"]["name"]
    # The pod template says where the generation it was made for comes from.
    env = {e["name"]: e for e in c["vibe-placement"]["env"]}
    path = env["VIBE_EXPECT_GENERATION"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert ANNOTATION_PLACEMENT_GENERATION in path

    if backend == "sglang":
        assert engine["--init-expert-location"] == init["--sglang-out"]
        assert int(engine["--ep-num-redundant-experts"]) == int(init["--redundant-experts"])
        assert int(engine["--tp-size"]) == ep
        assert "--enable-eplb" not in engine  # SGLang's own rebalancer would undo the placement
        assert moed["spec"]["output"]["formats"] == ["vibe", "sglang"]
    else:
        from vibe.engines.trtllm import engine_args_path

        assert "--enable-attention-dp" in engine  # TensorRT-LLM builds the balancer only with attention DP

        out = init["--trtllm-out"]
        # vibe serving init writes the engine-args snippet beside the load-balancer file.
        assert engine["--extra-engine-args"] == str(engine_args_path(Path(out)))
        assert "layer_updates_per_iter" not in DGD_FILES[backend].read_text().split("\napiVersion")[1]
        main_env = {e["name"]: e.get("value") for e in c["main"]["env"]}
        loads = " ".join(c["vibe-loads"]["command"])
        assert f"--stats-dir={main_env['EXPERT_STATISTIC_PATH']}" in loads and f"--assignment={out}" in loads
        ref = moed["spec"]["workload"]["configMapRef"]
        assert f"--configmap={ref['name']}" in loads and f"--key={ref['key']}" in loads
        assert moed["spec"]["output"]["formats"] == ["vibe", "trtllm"]


def test_rbac_names_the_dgds_and_never_what_dynamo_generates() -> None:
    (_, role, _) = load(DYNAMO / "rbac.yaml")
    dgd_rule = next(r for r in role["rules"] if "dynamographdeployments" in r["resources"])
    for path in DGD_FILES.values():
        (dgd,) = load(path)
        assert dgd["metadata"]["name"] in dgd_rule["resourceNames"] and "patch" in dgd_rule["verbs"]
    groups = {g for r in role["rules"] for g in r["apiGroups"]}
    assert not groups & {api.LWS_API_GROUP, "grove.io"}


# ---- vibe's own CLI accepts every vibe command line of the examples


def vibe_commands() -> list[tuple[str, list[str]]]:
    out = []
    examples = ROOT / "examples"
    for path in (
        sorted(DYNAMO.glob("*.yaml"))
        + sorted((examples / "sglang").glob("*.yaml"))
        + sorted((examples / "llm-d").glob("*.yaml"))
    ):
        for doc in load(path):
            # A JSON 6902 patch is a list of ops; a container it adds is an op's value.
            added = (
                [op["value"] for op in doc if re.search(r"/(init)?[cC]ontainers/-$", op["path"])]
                if isinstance(doc, list)
                else []
            )
            for container in _all_containers(doc) + added:
                cmd = [*container.get("command", []), *container.get("args", [])]
                # A shell script: each `;`-separated command of it that runs vibe.
                scripts = (
                    [shlex.split(part) for part in cmd[2].split(";")] if cmd[:2] == ["sh", "-c"] else [cmd]
                )
                out += [(f"{path.name}:{container['name']}", c[1:]) for c in scripts if c[:1] == ["vibe"]]
    return out


def _all_containers(doc: Any) -> list[dict]:
    found: list[dict] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += [c for c in value if isinstance(c, dict) and "name" in c]
            found += _all_containers(value)
    elif isinstance(doc, list):
        for item in doc:
            found += _all_containers(item)
    return found


COMMANDS = vibe_commands()


def test_every_example_runs_vibe() -> None:
    names = {n for n, _ in COMMANDS}
    for want in (
        "dgd-sglang.yaml:vibe-placement",
        "dgd-trtllm.yaml:vibe-loads",
        "vibe-eplb-patch.yaml:vibe-loads",
        "leaderworkerset.yaml:vibe-watch",
    ):
        assert want in names, names


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_vibe_cli_accepts_the_example(where: str, argv: list[str]) -> None:
    import click
    import typer

    from vibe.cli import app

    command: Any = typer.main.get_command(app)
    ctx = click.Context(command)
    words = list(argv)
    while words and not words[0].startswith("-"):
        command = command.get_command(ctx, words.pop(0))
        assert command is not None, f"{where}: no command {argv}"
    command.make_context(where, words)  # raises on an unknown flag or a value of the wrong type


def test_the_cli_check_can_fail() -> None:
    argv = ["serving", "init", "--placement-dir=/p", "--sglang-outt=/x"]
    with pytest.raises(Exception, match="No such option"):
        test_vibe_cli_accepts_the_example("typo", argv)


# ---- against the API server


def test_dgd_pod_templates_are_valid_pods(kube_api: Any, namespace: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    checked = 0
    for path in DGD_FILES.values():
        (dgd,) = load(path)
        for comp in dgd["spec"]["components"]:
            body = {
                "metadata": {"name": f"{dgd['metadata']['name']}-{comp['name'].lower()}"},
                "template": comp["podTemplate"],
            }
            core.create_namespaced_pod_template(namespace, body, dry_run="All", field_validation="Strict")
            checked += 1
    assert checked == 4
    # The same call refuses what a CRD schema would let through: a mount of a volume the pod lacks.
    (dgd,) = load(DGD_FILES["sglang"])
    template = engine_component(dgd)["podTemplate"]
    template["spec"]["volumes"] = [v for v in template["spec"]["volumes"] if v["name"] != "placement"]
    with pytest.raises(client.ApiException) as e:
        core.create_namespaced_pod_template(
            namespace,
            {"metadata": {"name": "bad"}, "template": template},
            dry_run="All",
            field_validation="Strict",
        )
    assert e.value.status == 422 and "volumeMounts[0].name" in e.value.body and "Not found" in e.value.body


def test_moedeployments_pass_vibes_crd(kube_api: Any, namespace: str) -> None:
    from kubernetes import client

    from vibe.crds.apply import apply_crds

    apply_crds(kube_api)
    custom = client.CustomObjectsApi(kube_api)
    for moed in moedeployments().values():
        custom.create_namespaced_custom_object(
            api.GROUP,
            api.VERSION,
            namespace,
            api.MOEDEPLOYMENT_PLURAL,
            moed,
            dry_run="All",
            field_validation="Strict",
        )


def test_leaderworkersets_pass_the_upstream_crd(kube_api: Any, namespace: str, lws_crd: None) -> None:
    from kubernetes import client

    custom = client.CustomObjectsApi(kube_api)
    for lws in [
        d
        for d in load(ROOT / "examples" / "sglang" / "leaderworkerset.yaml")
        if d["kind"] == "LeaderWorkerSet"
    ]:
        custom.create_namespaced_custom_object(
            api.LWS_API_GROUP,
            api.LWS_API_VERSION,
            namespace,
            api.LWS_PLURAL,
            lws,
            dry_run="All",
            field_validation="Strict",
        )
    bad = dict(lws)
    bad["spec"] = {**lws["spec"], "leaderWorkerTemplte": {}}
    with pytest.raises(client.ApiException) as e:
        custom.create_namespaced_custom_object(
            api.LWS_API_GROUP,
            api.LWS_API_VERSION,
            namespace,
            api.LWS_PLURAL,
            bad,
            dry_run="All",
            field_validation="Strict",
        )
    assert (
        e.value.status == 400
        and "strict decoding error" in e.value.body
        and "leaderWorkerTemplte" in e.value.body
    )


def test_the_examples_role_may_patch_its_dgd_and_nothing_dynamo_generates(
    kube_api: Any, cluster: Any, namespace: str, tmp_path: Path, dgd_crd: None
) -> None:
    from kubernetes import client, config
    from test_serving_dynamo import annotations, create_dgd, dgd, read_dgd

    from vibe.cluster.identity import service_account_kubeconfig
    from vibe.serving import kube
    from vibe.serving.errors import ServingError

    for doc in load(DYNAMO / "rbac.yaml"):
        kind = doc["kind"]
        if kind == "ServiceAccount":
            client.CoreV1Api(kube_api).create_namespaced_service_account(namespace, doc)
        elif kind == "Role":
            client.RbacAuthorizationV1Api(kube_api).create_namespaced_role(namespace, doc)
        else:
            client.RbacAuthorizationV1Api(kube_api).create_namespaced_role_binding(namespace, doc)
    create_dgd(kube_api, namespace, dgd("dsv3"))
    create_dgd(kube_api, namespace, dgd("someone-elses"))
    kc = service_account_kubeconfig(
        kube_api, cluster.kubeconfig, namespace, "dsv3-serving", tmp_path / "sa.kubeconfig"
    )
    as_pod = config.new_client_from_config(config_file=str(kc))

    def allowed() -> bool:
        try:
            return kube.restart_workload(as_pod, namespace, api.DGD_KIND, "dsv3/decode", 2)
        except ServingError as e:
            if "403" in str(e):
                return False
            raise

    from vibe.cluster.waiting import wait_for

    assert wait_for(allowed, timeout=30, what="the Role to take effect") is True
    assert annotations(read_dgd(kube_api, namespace, "dsv3"))["decode"] == "2"
    with pytest.raises(ServingError) as e:
        kube.restart_workload(as_pod, namespace, api.DGD_KIND, "someone-elses", 2)
    assert "403" in str(e.value)
    with pytest.raises(ServingError) as e:
        kube.restart_workload(as_pod, namespace, "LeaderWorkerSet", "dsv3-0-decode", 2)
    assert "403" in str(e.value)


# ---- examples/llm-d: a kustomize patch of an llm-d vLLM LeaderWorkerSet

LLMD = ROOT / "examples" / "llm-d"


@pytest.fixture(scope="module")
def llmd_rendered() -> list[dict]:
    """``kubectl kustomize examples/llm-d`` with the pinned kubectl (hack/k8s/go.mod)."""
    import subprocess

    from vibe.cluster import binaries

    kubectl = binaries.ensure(components=["kubernetes"])["kubectl"]
    out = subprocess.run(
        [str(kubectl), "kustomize", str(LLMD)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _lws(docs: list[dict]) -> dict:
    (lws,) = [d for d in docs if d["kind"] == "LeaderWorkerSet"]
    return lws


def test_llmd_patch_adds_vibe_and_changes_nothing_else(llmd_rendered: list[dict]) -> None:
    from vibe.serving.vllm_eplb import ENV_LOADS_FILE, ENV_PLACEMENT_DIR

    base = _lws(load(LLMD / "decode.yaml"))
    lws = _lws(llmd_rendered)
    spec = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    base_spec = base["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    vllm = spec["containers"][0]
    # The script is llm-d's, line for line, plus vibe's two flags and nothing else.
    added = [
        line
        for line in vllm["args"][0].splitlines()
        if line not in base_spec["containers"][0]["args"][0].splitlines()
    ]
    assert [a.split()[0] for a in added] == ["--enable-eplb", "--eplb-config"]
    assert set(base_spec["containers"][0]["args"][0].splitlines()) <= set(vllm["args"][0].splitlines())
    eplb = json.loads(re.search(r"--eplb-config '([^']+)'", vllm["args"][0]).group(1))
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    assert {e["name"] for e in base_spec["containers"][0]["env"]} < set(env)

    moed = next(d for d in llmd_rendered if d["kind"] == "MoEDeployment")
    gpus, model = moed["spec"]["gpus"], moed["spec"]["model"]
    size, local = lws["spec"]["leaderWorkerTemplate"]["size"], int(env["DP_SIZE_LOCAL"])
    assert size * local == gpus["count"] == size * int(vllm["resources"]["limits"]["nvidia.com/gpu"])
    # vLLM's EP rank order is the pods' (worker index, GPU): the GPUs come from the pods, not the nodes.
    assert gpus["gpusPerPod"] == local
    assert gpus["podSelector"]["matchLabels"] == {api.LWS_LABEL_NAME: lws["metadata"]["name"]}
    assert model["experts"] + eplb["num_redundant_experts"] == gpus["slotsPerGPU"] * gpus["count"]
    # The plugin reads the mounted <moedeployment>-placement; rank 0's window goes to the sidecar.
    mounts = {m["name"]: m["mountPath"] for m in vllm["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert env[ENV_PLACEMENT_DIR] == mounts["placement"]
    assert volumes["placement"]["configMap"]["name"] == f"{moed['metadata']['name']}-placement"
    sidecar = flags(next(c for c in spec["containers"] if c["name"] == "vibe-loads")["command"])
    assert sidecar["--engine"] == "vllm" and "--follow" in sidecar
    assert sidecar["--dump"] == env[ENV_LOADS_FILE]
    assert Path(env[ENV_LOADS_FILE]).parent.as_posix().startswith(mounts["vibe-run"])  # shared emptyDir
    ref = moed["spec"]["workload"]["configMapRef"]
    assert (sidecar["--configmap"], sidecar["--key"]) == (ref["name"], ref["key"])
    # Live path: vLLM applies a placement itself; the watch sidecar only checks and reports.
    watch = flags(next(c for c in spec["containers"] if c["name"] == "vibe-watch")["command"])
    assert moed["spec"]["serving"]["onUpdate"] == "eplb" and watch["--documents"] == "vllm"
    assert "vllm" in moed["spec"]["output"]["formats"]
    assert int(watch["--ep-size"]) == gpus["count"]
    assert int(watch["--redundant-experts"]) == eplb["num_redundant_experts"]
    assert "--target" not in watch
    assert lws["metadata"]["name"] == base["metadata"]["name"]


def test_llmd_render_passes_the_upstream_crds(
    llmd_rendered: list[dict], kube_api: Any, namespace: str, lws_crd: None
) -> None:
    from kubernetes import client

    from vibe.crds.apply import apply_crds

    apply_crds(kube_api)
    custom, core = client.CustomObjectsApi(kube_api), client.CoreV1Api(kube_api)
    strict = {"dry_run": "All", "field_validation": "Strict"}
    lws = _lws(llmd_rendered)
    custom.create_namespaced_custom_object(
        api.LWS_API_GROUP, api.LWS_API_VERSION, namespace, api.LWS_PLURAL, lws, **strict
    )
    template = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]
    core.create_namespaced_pod_template(
        namespace, {"metadata": {"name": "llmd"}, "template": template}, **strict
    )
    moed = next(d for d in llmd_rendered if d["kind"] == "MoEDeployment")
    custom.create_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.MOEDEPLOYMENT_PLURAL, moed, **strict
    )
