"""The deployment files in `infra/` parse and agree with each other and with the code they run.

Nothing here starts a cluster: it catches what a typo would break before `kubectl apply` / `ray up` /
`docker compose up` would — wrong kinds and fields, entrypoints naming commands, options or configs that do
not exist, data folders that training reads but curation never writes, images and versions that disagree
between files, GPUs outside the GPU group, ports open beyond localhost, credentials in the repository.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import typer.main
import yaml

from curation.config import load_config
from orchestration.cli import app, main
from orchestration.commands.options import name_value_pairs
from orchestration.pipeline.spec import load_spec, training_pipeline
from training.config import PRESET_NAMES, load_pipeline, load_preset

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
COMPOSE = INFRA / "mlflow" / "docker-compose.yaml"
ENV_EXAMPLE = INFRA / "mlflow" / ".env.example"
RAY_UP = INFRA / "ray-cluster.yaml"

# Fields of the KubeRay v1 specs (ray-operator/apis/ray/v1/*_types.go); anything else is a typo that the
# API server would reject or, worse, silently drop.
RAYCLUSTER_SPEC_FIELDS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "upgradeStrategy",
    "authOptions",
}  # fmt: skip
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources"}
WORKER_GROUP_FIELDS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
    "scaleStrategy", "suspend", "idleTimeoutSeconds", "resources", "labels",
}  # fmt: skip
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
    "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule",
}  # fmt: skip
KNOWN_KINDS = {
    ("v1", "PersistentVolumeClaim"), ("v1", "Service"), ("v1", "ConfigMap"),
    ("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"),
}  # fmt: skip
GPU = "nvidia.com/gpu"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)
SECRET_LOOKING = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)\b(password|secret)\s*[:=]\s*['\"]?(?!\$\{)[A-Za-z0-9+/_.-]{6,}"),
]


def _load_all(path: Path) -> list[dict]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} has no YAML document"
    return docs


def _kuberay_docs() -> list[dict]:
    return [doc for path in sorted(KUBERAY.glob("*.yaml")) for doc in _load_all(path)]


def _one(kind: str) -> dict:
    found = [doc for doc in _kuberay_docs() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _rayjobs() -> list[dict]:
    return [doc for doc in _kuberay_docs() if doc["kind"] == "RayJob"]


def _groups(cluster: dict) -> dict[str, dict]:
    """Pod groups of a RayCluster by name (the head is "head")."""
    spec = cluster["spec"]
    return {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _gpus(container: dict) -> dict[str, int]:
    resources = container.get("resources", {})
    return {part: int(resources.get(part, {}).get(GPU, 0)) for part in ("requests", "limits")}


def _commands(entrypoint: str) -> list[list[str]]:
    """The simple commands of a `a && b && c` entrypoint, each split as the shell would."""
    return [shlex.split(part) for part in entrypoint.split("&&")]


def _svp_commands(job: dict) -> list[list[str]]:
    commands = [argv[1:] for argv in _commands(job["spec"]["entrypoint"]) if argv[0] == "svp"]
    assert commands, f"RayJob {job['metadata']['name']} runs no svp command"
    return commands


def _leftover(ctx) -> list[str]:
    # A group keeps the arguments after its own options for a subcommand (click's protected args).
    protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", None) or []
    return [*protected, *ctx.args]


def _parse_svp(args: list[str]) -> tuple[list[str], dict]:
    """Resolve `svp ARGS` to its command path and parse its options exactly as the CLI would, without
    running it. Unknown commands, options or bad values raise click's usage errors."""
    command = typer.main.get_command(app)
    ctx = command.make_context("svp", [], resilient_parsing=True)
    path: list[str] = []
    rest = list(args)
    while hasattr(command, "get_command") and rest and (sub := command.get_command(ctx, rest[0])):
        path.append(rest.pop(0))
        command = sub
        ctx = command.make_context(path[-1], [], parent=ctx, resilient_parsing=True)
    ctx = command.make_context(path[-1] if path else "svp", rest, parent=ctx.parent)
    assert not _leftover(ctx), f"svp {' '.join(args)}: unexpected arguments {_leftover(ctx)}"
    return path, ctx.params


def _head_files(cluster: dict, docs: list[dict]) -> dict[str, str]:
    """Files that ConfigMap volumes put into the head container: {path: content}."""
    head = _groups(cluster)["head"]
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in head["template"]["spec"].get("volumes", [])}
    files = {}
    for mount in _containers(head)[0].get("volumeMounts", []):
        source = volumes[mount["name"]].get("configMap")
        if source is not None:
            for key, text in configmaps[source["name"]].items():
                files[posixpath.join(mount["mountPath"], key)] = text
    return files


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$` (a literal dollar)."""

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name, "")
        if op == ":?" and not value:
            raise KeyError(f"{name} is required: {arg}")
        return value or (arg if op == ":-" else "")

    text = text.replace("$$", "\0")
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, text).replace("\0", "$")


def _env_file(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def _dockerfile_arg(path: Path, name: str) -> str:
    found = re.search(rf"^ARG {name}=(\S+)$", path.read_text(), re.MULTILINE)
    assert found, f"{path}: no ARG {name}=..."
    return found.group(1)


# --- every file parses and has the shape its tool expects ------------------------------------------------


def test_every_infra_yaml_parses():
    paths = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
    assert {KUBERAY / "raycluster.yaml", KUBERAY / "rayjob-curate.yaml", RAY_UP, COMPOSE} <= set(paths)
    for path in paths:
        _load_all(path)


def test_kubernetes_kinds_api_versions_and_fields():
    docs = _kuberay_docs()
    names = set()
    for doc in docs:
        assert (doc.get("apiVersion"), doc.get("kind")) in KNOWN_KINDS, doc.get("kind")
        assert doc["metadata"]["name"], doc
        assert "namespace" not in doc["metadata"], "leave the namespace to kubectl -n"
        names.add((doc["kind"], doc["metadata"]["name"]))
    assert len(names) == len(docs), "two documents of one kind share a name"

    cluster = _one("RayCluster")
    assert set(cluster["spec"]) <= RAYCLUSTER_SPEC_FIELDS, set(cluster["spec"]) - RAYCLUSTER_SPEC_FIELDS
    assert set(cluster["spec"]["headGroupSpec"]) <= HEAD_GROUP_FIELDS
    for name, group in _groups(cluster).items():
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), f"{name}: rayStartParams"
        assert _containers(group)[0]["name"] in {"ray-head", "ray-worker"}
        if name != "head":
            assert set(group) <= WORKER_GROUP_FIELDS, set(group) - WORKER_GROUP_FIELDS
            assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], name
    for job in _rayjobs():
        assert set(job["spec"]) <= RAYJOB_SPEC_FIELDS, set(job["spec"]) - RAYJOB_SPEC_FIELDS
        # A job on the long-lived cluster: selecting it by name, never tearing it down.
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        assert not job["spec"].get("shutdownAfterJobFinishes", False)


def test_every_pod_mounts_the_shared_volume_and_reaches_mlflow():
    docs = _kuberay_docs()
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    cluster = _one("RayCluster")
    for name, group in _groups(cluster).items():
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        container = _containers(group)[0]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts["/shared"]]["persistentVolumeClaim"]["claimName"] in claims, name
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        host, port = re.fullmatch(r"http://([\w.-]+):(\d+)", env["MLFLOW_TRACKING_URI"]).groups()
        assert host in services and int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, name
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every node writes /shared"


def test_gpus_only_in_the_gpu_group_and_enough_for_the_training_job():
    cluster = _one("RayCluster")
    gpus_per_pod = {}
    for name, group in _groups(cluster).items():
        counts = [_gpus(c) for c in _containers(group)]
        assert all(c["requests"] in (0, c["limits"]) for c in counts), f"{name}: GPU requests != limits"
        gpus_per_pod[name] = sum(c["limits"] for c in counts)
        assert "num-gpus" not in group["rayStartParams"] or gpus_per_pod[name] > 0, name
    assert {name for name, n in gpus_per_pod.items() if n > 0} == {"gpu"}, gpus_per_pod
    assert _groups(cluster)["gpu"]["template"]["spec"]["tolerations"], "GPU nodes are usually tainted"

    capacity = gpus_per_pod["gpu"] * _groups(cluster)["gpu"]["maxReplicas"]
    for job in _rayjobs():
        for args in _svp_commands(job):
            path, params = _parse_svp(args)
            if path in (["train"], ["pipeline", "run"]):
                assert params["gpus_per_worker"] > 0, "the GPU cluster trains on GPUs"
                assert params["workers"] * params["gpus_per_worker"] <= capacity, (params, capacity)


# --- entrypoints run real commands with real configs ----------------------------------------------------


def test_entrypoints_name_real_cli_commands_and_options(capsys):
    seen = set()
    for job in _rayjobs():
        entrypoint = job["spec"]["entrypoint"]
        if re.search(r"&&|;|\|", entrypoint):
            # K8sJobMode pastes the entrypoint into the submitter pod's shell line: the part after `&&`
            # would run in that pod. HTTPMode hands the string to Ray's job server unchanged.
            assert job["spec"].get("submissionMode") == "HTTPMode", job["metadata"]["name"]
        for argv in _commands(entrypoint):
            assert argv[0] in {"svp", "ln"}, f"{job['metadata']['name']}: unexpected command {argv[0]}"
        for args in _svp_commands(job):
            path, _ = _parse_svp(args)
            assert main([*path, "--help"]) == 0, path
            seen.add(tuple(path))
    capsys.readouterr()
    assert {("curate",), ("pipeline", "run")} <= seen


def test_parse_svp_rejects_what_the_cli_rejects():
    # The checker above is only worth something if it fails on typos.
    from typer._click.exceptions import UsageError

    for bad in (
        ["curate", "--inptu", "x"],
        ["traim", "x"],
        ["train", "x", "--workers", "many"],
        ["curate", "nope"],
    ):
        with pytest.raises((UsageError, AssertionError)):
            _parse_svp(bad)
    assert _parse_svp(["curate", "filter", "out", "--thresholds", "t.yaml"])[0] == ["curate", "filter"]


def _pipeline_specs(tmp_path: Path) -> list:
    """The pipeline files that `svp pipeline run` entrypoints name, loaded from what the head mounts."""
    files = _head_files(_one("RayCluster"), _kuberay_docs())
    specs = []
    for job in _rayjobs():
        for args in _svp_commands(job):
            path, params = _parse_svp(args)
            if path == ["pipeline", "run"]:
                name = str(params["pipeline"])
                assert name in files, f"{name} is not mounted on the head (where job drivers run)"
                local = tmp_path / Path(name).name
                local.write_text(files[name])
                specs.append(load_spec(local))  # unknown keys or bad values raise, naming the key
    return specs


def test_curate_configs_exist_on_the_head_and_validate(tmp_path):
    from curation.thresholds import load_thresholds

    docs = _kuberay_docs()
    files = _head_files(_one("RayCluster"), docs)
    configs = []
    for job in _rayjobs():
        for args in _svp_commands(job):
            path, params = _parse_svp(args)
            if path == ["curate"] and params["config"] is not None:
                configs.append(str(params["config"]))
    specs = _pipeline_specs(tmp_path)
    configs += [spec.curate.config for spec in specs if spec.curate.config]
    for name in configs:
        assert name in files, f"{name} is not mounted on the head (where job drivers run)"
        local = tmp_path / Path(name).name
        local.write_text(files[name])
        load_config(local)  # unknown keys or bad values raise, naming the key
    assert len(set(configs)) == len([f for f in files if "curate" in f]), (
        "a mounted curation config is unused"
    )
    for spec in specs:
        name = spec.filter.thresholds
        assert name in files, f"{name} is not mounted on the head"
        (tmp_path / "t.yaml").write_text(files[name])
        load_thresholds(tmp_path / "t.yaml")


def test_training_reads_what_curation_writes(tmp_path):
    outputs: set[str] = set()
    train_params = []
    pipelines = []
    for spec in _pipeline_specs(tmp_path):
        assert spec.curate.input.startswith("/shared/") and str(spec.curated).startswith("/shared/")
        assert str(spec.work).startswith("/shared/"), "checkpoints must be on shared storage"
        outputs.add(posixpath.normpath(str(spec.curated)))
        pipelines.append(training_pipeline(spec))
    for job in _rayjobs():
        for argv in _commands(job["spec"]["entrypoint"]):
            if argv[0] == "ln":
                source, link = argv[-2:]
                if posixpath.normpath(posixpath.join(posixpath.dirname(link), source)) in outputs:
                    outputs.add(posixpath.normpath(link))
                continue
            path, params = _parse_svp(argv[1:])
            if path == ["curate"]:
                assert params["input"].startswith("/shared/") and str(params["output"]).startswith("/shared/")
                outputs.add(posixpath.normpath(str(params["output"])))
            elif path == ["train"]:
                train_params.append(params)
    assert train_params or pipelines, "no job trains"
    for params in train_params:
        variables = name_value_pairs(params["var"], "--var")
        if params["pipeline"] in PRESET_NAMES:
            pipelines.append(load_preset(params["pipeline"], variables=variables))
        else:
            pipelines.append(load_pipeline(params["pipeline"], variables=variables))
        assert str(params["work_dir"]).startswith("/shared/"), "checkpoints must be on shared storage"
    for pipeline in pipelines:
        for stage in pipeline.stages:
            for source in stage.data:
                assert posixpath.normpath(source) in outputs, f"stage {stage.name} reads {source}: {outputs}"


# --- images and versions agree across files -------------------------------------------------------------


def test_one_image_everywhere_tagged_with_the_package_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    cluster = _one("RayCluster")
    images = {c["image"] for g in _groups(cluster).values() for c in _containers(g)}
    for job in _rayjobs():
        template = job["spec"].get("submitterPodTemplate")
        if template:
            images |= {c["image"] for c in template["spec"]["containers"]}
    docker = yaml.safe_load(RAY_UP.read_text())["docker"]
    images |= {docker[k] for k in ("image", "head_image", "worker_image") if k in docker}
    assert images == {f"svp:{version}"}, images
    assert f"-t svp:{version}" in (INFRA / "README.md").read_text()
    assert f"-t svp:{version}" in (INFRA / "Dockerfile").read_text()


def test_versions_agree_between_image_manifests_and_readme():
    dockerfile = INFRA / "Dockerfile"
    ray_version = _dockerfile_arg(dockerfile, "RAY_VERSION")
    assert _one("RayCluster")["spec"]["rayVersion"] == ray_version
    readme = (ROOT / "README.md").read_text()
    for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        assert f"{package}=={_dockerfile_arg(dockerfile, arg)}" in readme, f"README pins another {package}"
    mlflow_version = _dockerfile_arg(INFRA / "mlflow" / "Dockerfile", "MLFLOW_VERSION")
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert services["mlflow"]["image"].endswith(f":{mlflow_version}")
    assert "DS_BUILD_OPS=0" in dockerfile.read_text()
    assert re.search(r"^USER (?!root)\w+", dockerfile.read_text(), re.MULTILINE), "image runs as root"


def test_ray_up_file_is_valid_for_the_ray_cluster_launcher():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(RAY_UP.read_text())
    validate_config(prepare_config(config))  # what `ray up` does first
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands", "initialization_commands"):
        assert not config.get(key), f"{key}: the image must already hold everything"
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert "--volume /shared:/shared" in config["docker"]["run_options"]


def test_ray_dashboard_is_bound_to_a_private_address_never_all_interfaces():
    """The dashboard accepts job submissions: the head pod's own IP (KubeRay) or a private IP (`ray up`)."""
    import ipaddress

    head = _groups(_one("RayCluster"))["head"]
    assert head["rayStartParams"]["dashboard-host"] == "$POD_IP"
    env = {e["name"]: e for e in _containers(head)[0]["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    start = " ".join(yaml.safe_load(RAY_UP.read_text())["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", start)
    assert len(hosts) == 1 and ipaddress.ip_address(hosts[0]).is_private, hosts
    assert (
        not ipaddress.ip_address(hosts[0]).is_unspecified and not ipaddress.ip_address(hosts[0]).is_loopback
    )
    readme = (INFRA / "README.md").read_text()
    assert "kubectl proxy" in readme and f"ssh -N -L 8265:{hosts[0]}:8265" in readme
    for path in (RAY_UP, KUBERAY / "raycluster.yaml"):
        assert "0.0.0.0" not in path.read_text(), path


# --- MLflow server: local by default, no credentials in the repository -----------------------------------


@pytest.mark.parametrize("env_source", ["unset", "env.example"])
def test_compose_ports_bound_to_localhost(env_source):
    env = _env_file(ENV_EXAMPLE) if env_source == "env.example" else {}
    required = re.findall(r"\$\{(\w+):\?", COMPOSE.read_text())
    env |= {name: "x" for name in required if not env.get(name)}  # the values a user must fill in
    services = yaml.safe_load(_interpolate(COMPOSE.read_text(), env))["services"]
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published, "the MLflow UI is published"
    for port in published:
        assert str(port).startswith("127.0.0.1:"), port
    assert set(services) >= {"postgres", "minio", "mlflow"}
    command = " ".join(services["mlflow"]["command"])
    assert "--serve-artifacts" in command and "--artifacts-destination" in command


def test_compose_refuses_to_start_without_passwords():
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        _interpolate(COMPOSE.read_text(), {})


def test_no_secrets_committed():
    compose = yaml.safe_load(COMPOSE.read_text())
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), f"{name}.{key} must come from .env"
    for key, value in _env_file(ENV_EXAMPLE).items():
        if SECRET_NAME.search(key):
            assert value == "", f".env.example: {key} has a value"
    for doc in _kuberay_docs():
        assert doc["kind"] != "Secret", "create Secrets with kubectl, not in the repository"
    cluster = _one("RayCluster")
    for group in _groups(cluster).values():
        for item in _containers(group)[0].get("env", []):
            assert not (SECRET_NAME.search(item["name"]) and "value" in item), item["name"]
    for path in INFRA.rglob("*"):
        if path.is_file() and path.name != ".env":
            text = path.read_text()
            for pattern in SECRET_LOOKING:
                assert not pattern.search(text), f"{path}: {pattern.pattern}"
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", "infra/mlflow/.env"], cwd=ROOT, check=False)
        assert ignored.returncode == 0, "infra/mlflow/.env (credentials) is not ignored by git"


def test_svp_commands_in_the_infra_readme_parse():
    text = (INFRA / "README.md").read_text().replace("\\\n", " ")
    lines = [line.split("#")[0].strip() for line in text.splitlines() if line.startswith("svp ")]
    assert len(lines) >= 2
    for line in lines:
        _parse_svp(shlex.split(line)[1:])
