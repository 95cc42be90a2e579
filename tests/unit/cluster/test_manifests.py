"""The cluster files a user applies as they are: KubeRay manifests, the cluster-launcher config, the image
recipe and the README's "Run on a cluster" section. Checks what kubectl, KubeRay, `ray up` and a reader
would trip over first."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import ray
import yaml

from raypipe.staging import add_models_commands
from raypipe.submit import add_submit_commands

REPO = Path(__file__).resolve().parents[3]
CLUSTER = REPO / "cluster"
RAY_CLUSTER = CLUSTER / "kuberay" / "ray-cluster.gpu.yaml"
RAY_JOB = CLUSTER / "kuberay" / "ray-job.anonymize.yaml"
LAUNCHER = CLUSTER / "launcher" / "aws-gpu.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
README = REPO / "README.md"
MANIFESTS = [RAY_CLUSTER, RAY_JOB, LAUNCHER]
IMAGE_ROOT = "/home/ray/raypipe"  # where cluster/Dockerfile and the launcher's file_mounts put the checkout

CREDENTIAL_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"(?i)aws_secret_access_key\s*[:=]"),
    re.compile(r"(?i)aws_session_token\s*[:=]"),
    re.compile(r"(?i)(password|passwd|api[_-]?key|secret[_-]?key|token)\s*[:=]\s*\S+"),
    re.compile(r"(?i)hf_[a-z0-9]{30,}"),  # Hugging Face token
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


def load(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    assert isinstance(data, dict), f"{path.name}: not a YAML mapping"
    return data


def header(path: Path) -> str:
    """The opening comment block, without the ``#`` marks."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip() if not line.startswith("#   ") else line[1:])
    return "\n".join(lines)


def commands(text: str, indented_only: bool = False) -> list[str]:
    """Shell commands in ``text`` with backslash continuations joined (comment marks already removed).

    ``indented_only``: in comment headers, commands are the indented lines; the rest is prose.
    """
    joined, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if current:
            current += " " + line
        elif re.match(r"^(raypipe|kubectl|docker|ray|aws|eksctl) ", line) and (
            raw.startswith(" ") or not indented_only
        ):
            current = line
        else:
            continue
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        joined.append(re.sub(r"\s+#.*$", "", current).rstrip(" &"))
        current = ""
    return joined


def cluster_section() -> str:
    """The README's "Run on a cluster" section: the commands that must match these files exactly."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Run on a cluster")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", cluster_section(), flags=re.S)
    return commands("\n".join(blocks))


def all_documented_commands() -> list[str]:
    return readme_commands() + [cmd for path in [*MANIFESTS, DOCKERFILE] for cmd in header_commands(path)]


def header_commands(path: Path) -> list[str]:
    return commands(header(path), indented_only=True)


# ---------------------------------------------------------------------------------------------- KubeRay


def test_every_cluster_yaml_parses_and_opens_with_usage() -> None:
    for path in MANIFESTS:
        load(path)
        usage = header(path)
        assert "Use" in usage, f"{path.name}: the opening comment must say how to use it"
        assert str(path.relative_to(REPO)) in usage, f"{path.name}: usage must name the file itself"
    assert "docker build -f cluster/Dockerfile" in header(DOCKERFILE)


def check_pod_template(template: dict[str, Any], where: str) -> list[dict[str, Any]]:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: no containers"
    for container in containers:
        assert container.get("image"), f"{where}: container without image"
        resources = container.get("resources") or {}
        assert resources.get("limits") and resources.get("requests"), f"{where}: needs requests and limits"
        assert {"cpu", "memory"} <= set(resources["limits"]), f"{where}: cpu and memory limits"
    assert template["spec"].get("serviceAccountName") == "raypipe", f"{where}: credentials come from IRSA"
    return containers


def check_ray_cluster_spec(spec: dict[str, Any], where: str) -> None:
    assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion must match the Ray in the image"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams are strings"
    check_pod_template(head["template"], f"{where} head")

    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups), f"{where}: needs a CPU and a GPU worker group"
    for name, group in groups.items():
        for key in ("minReplicas", "maxReplicas", "replicas"):
            assert isinstance(group[key], int), f"{where} {name}: {key} must be an integer"
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] >= 1
        assert isinstance(group["rayStartParams"], dict)
        containers = check_pod_template(group["template"], f"{where} {name}")
        gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for c in containers]
        tolerations = group["template"]["spec"].get("tolerations") or []
        if name == "gpu":
            assert all(isinstance(g, int) and g >= 1 for g in gpus), f"{where}: GPU group limits nvidia.com/gpu"
            assert [c["resources"]["requests"].get("nvidia.com/gpu") for c in containers] == gpus
            assert any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule" for t in tolerations)
        else:
            assert not any(gpus), f"{where}: only the GPU group asks for GPUs"


def test_ray_cluster_has_head_cpu_and_autoscaled_gpu_groups() -> None:
    manifest = load(RAY_CLUSTER)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayCluster"
    assert manifest["metadata"]["name"] == "raypipe"
    check_ray_cluster_spec(manifest["spec"], RAY_CLUSTER.name)
    # The usage comment forwards the head service that KubeRay names <cluster>-head-svc.
    assert f"service/{manifest['metadata']['name']}-head-svc" in header(RAY_CLUSTER)


def test_ray_job_runs_the_job_entrypoint_and_cleans_up() -> None:
    manifest = load(RAY_JOB)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    entrypoint = shlex.split(spec["entrypoint"])
    assert entrypoint[:2] == ["python", f"{IMAGE_ROOT}/jobs/anonymize.py"]
    assert "--config" in entrypoint
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 1
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict)
    assert all(isinstance(v, str) for v in runtime_env.get("env_vars", {}).values())
    assert "rayClusterSpec" in spec or "clusterSelector" in spec
    check_ray_cluster_spec(spec["rayClusterSpec"], RAY_JOB.name)


def test_ray_job_config_comes_from_a_documented_configmap() -> None:
    spec = load(RAY_JOB)["spec"]
    config = shlex.split(spec["entrypoint"])[shlex.split(spec["entrypoint"]).index("--config") + 1]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for c in head["containers"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in head.get("volumes", [])}
    folder, key = config.rsplit("/", 1)
    configmap = volumes[mounts[folder]]["configMap"]["name"]  # the driver runs on the head
    created = [cmd for cmd in header_commands(RAY_JOB) if cmd.startswith("kubectl create configmap")]
    assert created, "the RayJob's usage must show how to create its ConfigMap"
    argv = shlex.split(created[0])
    assert argv[3] == configmap
    source_key, source = next(a for a in argv if a.startswith("--from-file=")).split("=", 1)[1].split("=", 1)
    assert source_key == key
    assert (REPO / source).is_file(), f"the ConfigMap is created from {source}, which must exist"
    assert any(cmd.startswith("kubectl create configmap " + configmap) for cmd in readme_commands())


def test_paths_inside_the_image_exist_in_the_repository() -> None:
    """Everything a manifest runs from /home/ray/raypipe is this repository's file (Dockerfile WORKDIR)."""
    assert f"WORKDIR {IMAGE_ROOT}" in DOCKERFILE.read_text()
    found = []
    for path in MANIFESTS:
        for match in re.finditer(rf"{IMAGE_ROOT}/([\w./-]+)", path.read_text()):
            found.append(match.group(1))
            assert (REPO / match.group(1)).exists(), f"{path.name} uses {match.group(0)}, not in the repo"
    assert "jobs/anonymize.py" in found
    assert "constraints.txt" in found


def test_every_repository_path_the_docs_mention_exists() -> None:
    texts = [cluster_section()] + [header(p) for p in [*MANIFESTS, DOCKERFILE]]
    pattern = re.compile(r"(?<![\w/.-])((?:cluster|jobs|raypipe|tests)/[\w./-]*\w|constraints\.txt)")
    mentioned = {m.group(1) for text in texts for m in pattern.finditer(text)}
    assert "jobs/configs/s3-gpu.yaml" in mentioned
    missing = sorted(p for p in mentioned if not (REPO / p).exists())
    assert not missing, f"mentioned but not in the repository: {missing}"


def test_images_are_the_same_everywhere_and_match_ray() -> None:
    images = set()
    for path in (RAY_CLUSTER, RAY_JOB):
        images |= set(re.findall(r"image:\s*(\S+)", path.read_text()))
    assert images == {"registry.example.com/raypipe:0.1.0"}
    assert "docker build -f cluster/Dockerfile -t registry.example.com/raypipe:0.1.0 ." in readme_commands()
    base = re.search(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), flags=re.M)
    assert base is not None
    assert base.group(1) == load(LAUNCHER)["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"


# --------------------------------------------------------------------------------------- cluster launcher


def test_launcher_config_validates_against_rays_schema() -> None:
    import jsonschema

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    config = load(LAUNCHER)
    jsonschema.validate(config, schema)

    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu = [name for name, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu, "needs a GPU worker node type"
    assert any(types[n]["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for n in gpu)
    assert all(types[n].get("max_workers", 0) >= 1 for n in gpu)
    for name, node_type in types.items():
        if name != config["head_node_type"]:
            assert "IamInstanceProfile" in node_type["node_config"], f"{name}: workers need a role, not keys"


def test_launcher_installs_this_checkout() -> None:
    config = load(LAUNCHER)
    assert config["file_mounts"] == {IMAGE_ROOT: "."}
    assert ".gitignore" in config["rsync_filter"]  # keeps .venv and outputs off the nodes
    assert any("pip install" in cmd and cmd.rstrip().endswith(IMAGE_ROOT) for cmd in config["setup_commands"])


# ---------------------------------------------------------------------------------------------- the image


def dockerfile_copies() -> list[str]:
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            parts = [p for p in line.split()[1:] if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def test_dockerfile_installs_raypipe_with_cuda_torch_and_no_weights() -> None:
    text = "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.startswith("#"))
    assert re.search(r"^RUN pip install .*-c constraints\.txt \.(\s|$)", text, flags=re.M)
    assert re.search(r'^RUN pip install .*"torch==', text, flags=re.M)
    assert "gpu" in text.split("FROM", 1)[1].splitlines()[0] or "cuda" in text.lower()
    for name in ("snapshot_download", "hf_hub_download", "models pull", "huggingface-cli", ".safetensors"):
        assert name not in text, f"the image must not bake weights ({name})"
    assert not [src for src in dockerfile_copies() if not (REPO / src).exists()]


def test_the_files_the_dockerfile_copies_build_raypipe(tmp_path: Path) -> None:
    """`pip install .` in the image sees only what COPY sent: that must be a buildable raypipe."""
    for source in dockerfile_copies():
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, tmp_path / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / source, tmp_path / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    wheels = list((tmp_path / "dist").glob("raypipe-*.whl"))
    assert len(wheels) == 1


def test_no_credentials_in_any_cluster_file() -> None:
    for path in sorted(p for p in CLUSTER.rglob("*") if p.is_file()):
        text = path.read_text(encoding="utf-8")
        for pattern in CREDENTIAL_PATTERNS:
            assert not pattern.search(text), f"{path.relative_to(REPO)} matches {pattern.pattern}"


# ------------------------------------------------------------------------------------------- the docs


def cli_parser() -> argparse.ArgumentParser:
    from raypipe.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "submit" not in subparsers.choices:
        add_submit_commands(subparsers)
    if "models" not in subparsers.choices:
        add_models_commands(subparsers)
    return parser


def test_documented_raypipe_commands_parse() -> None:
    parser = cli_parser()
    documented = [cmd for cmd in all_documented_commands() if cmd.startswith("raypipe ")]
    assert any(cmd.startswith("raypipe submit ") for cmd in documented)
    assert any(cmd.startswith("raypipe models pull ") for cmd in documented)
    for cmd in documented:
        argv = shlex.split(cmd)[1:]
        args = parser.parse_args(argv)
        if argv[0] == "submit":
            job = args.job[1:] if args.job[:1] == ["--"] else args.job
            assert job[0] == "anonymize", cmd
            parser.parse_args(job)  # the job's own arguments, as jobs/anonymize.py will parse them


def test_shard_patterns_in_commands_are_quoted() -> None:
    """An unquoted {00000..00099} is expanded by the shell into many arguments."""
    for cmd in all_documented_commands():
        braces = re.findall(r"\{\d+\.\.\d+\}", cmd)
        quoted = re.findall(r"'[^']*\{\d+\.\.\d+\}[^']*'", cmd)
        assert len(braces) == len(quoted), f"quote the shard pattern: {cmd}"


def test_readme_applies_the_files_in_this_folder() -> None:
    documented = readme_commands()
    assert "kubectl apply -f cluster/kuberay/ray-cluster.gpu.yaml" in documented
    assert "kubectl apply -f cluster/kuberay/ray-job.anonymize.yaml" in documented
    assert "ray up -y cluster/launcher/aws-gpu.yaml" in documented
    for cmd in all_documented_commands():
        argv = shlex.split(cmd)
        if argv[:2] in (["kubectl", "apply"], ["kubectl", "delete"], ["docker", "build"]):
            files = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-f" and argv[i + 1] != "-"]
            assert all((REPO / f).is_file() for f in files), cmd
        if argv[0] == "ray":
            assert (REPO / argv[-1]).is_file(), cmd


def test_the_image_runs_insightface_on_the_gpu() -> None:
    text = DOCKERFILE.read_text()
    assert "pip uninstall -y onnxruntime" in text
    assert "onnxruntime-gpu==$(sed -n 's/^onnxruntime==//p' constraints.txt)" in text
    pinned = [
        line
        for line in (CLUSTER.parent / "constraints.txt").read_text().splitlines()
        if line.startswith("onnxruntime==")
    ]
    assert len(pinned) == 1  # the version the GPU build follows
