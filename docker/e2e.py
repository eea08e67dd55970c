"""`make e2e`: the gateway and every feature service from the built image, one container each.

Containers share the host's network and bind 127.0.0.1 on free ports. The script
waits for every server's grpc.health.v1 to say SERVING, analyses a sample photo and
the sample clip through the gateway, checks the answers (every feature answered,
no feature error, tags merged), prints the merged tags, and always removes its
containers. Exit 0 = pass. The engine command line comes from docker/podman.sh
(VISIONMESH_ENGINE) so build and run use the same flags.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.net import free_port
from visionmesh import client, features
from visionmesh.v1 import gateway_pb2, gateway_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
HEALTH_TIMEOUT_S = 300.0


def engine() -> list[str]:
    return shlex.split(os.environ.get("VISIONMESH_ENGINE", "podman"))


def run(args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class Containers:
    """Started containers, removed on exit whatever happened."""

    def __init__(self, image: str, ulimits: list[str]) -> None:
        self.image = image
        self.ulimits = ulimits
        self.names: list[str] = []
        self.tag = f"vm-e2e-{os.getpid()}"

    def start(self, name: str, args: list[str], volumes: Sequence[str] = ()) -> str:
        cname = f"{self.tag}-{name}"
        cmd = [*engine(), "run", "--detach", "--name", cname, "--network", "host"]
        # Logs readable by `logs` without journald; no HEALTHCHECK timers (they need systemd),
        # this script asks grpc.health.v1 itself.
        cmd += ["--log-driver", "k8s-file", "--health-cmd", "none"]
        cmd += [*self.ulimits, *(f"--volume={v}" for v in volumes), self.image, *args]
        # Creating a container on vfs storage copies the whole image: minutes on a busy disk.
        out = run(cmd, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"{name}: container did not start: {out.stderr.strip()}")
        self.names.append(cname)
        return cname

    def running(self, cname: str) -> bool:
        out = run([*engine(), "inspect", "--format", "{{.State.Running}}", cname])
        return out.stdout.strip() == "true"

    def logs(self, cname: str) -> str:
        return run([*engine(), "logs", "--tail", "30", cname]).stdout

    def remove(self) -> None:
        if self.names:
            # Removing a container on vfs storage deletes a full copy of the image: minutes.
            run([*engine(), "rm", "--force", "--time", "5", *self.names], timeout=900)
            self.names.clear()


def wait_serving(containers: Containers, started: dict[str, tuple[str, str]]) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    pending = dict(started)
    while pending and time.monotonic() < deadline:
        for name, (cname, address) in list(pending.items()):
            if serving(address):
                del pending[name]
            elif not containers.running(cname):
                raise RuntimeError(f"{name} exited:\n{containers.logs(cname)}")
        time.sleep(1)
    if pending:
        logs = "\n".join(f"--- {n}\n{containers.logs(c)}" for n, (c, _) in pending.items())
        raise RuntimeError(f"not SERVING after {HEALTH_TIMEOUT_S:.0f} s: {sorted(pending)}\n{logs}")


def check_answer(path: Path, result: object, fields: list[str]) -> list[str]:
    """Problems with one answer (empty = fine)."""
    problems = []
    errors = list(getattr(result, "errors", []))
    if errors:
        problems.append(f"{path.name}: feature errors {[(e.feature, e.message) for e in errors]}")
    if not list(getattr(result, "tags", [])):
        problems.append(f"{path.name}: no merged tags")
    if isinstance(result, gateway_pb2.AnalyzeResponse):
        for feature in fields:
            if not result.HasField(feature):  # type: ignore[arg-type]
                problems.append(f"{path.name}: no {feature} answer")
    elif isinstance(result, gateway_pb2.AnalyzeVideoResponse) and result.video.frames_analyzed < 1:
        problems.append(f"{path.name}: no frame analysed")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--photo", default=str(ROOT / "samples" / "astronaut.jpg"))
    parser.add_argument("--clip", default=str(ROOT / "samples" / "clip.mp4"))
    args = parser.parse_args(argv)
    ulimits = shlex.split(os.environ.get("VISIONMESH_ULIMITS", ""))
    specs = features.all_features()
    services = [spec.service for spec in specs]
    containers = Containers(args.image, ulimits)
    t0 = time.monotonic()
    try:
        started: dict[str, tuple[str, str]] = {}

        def start(name: str) -> tuple[str, tuple[str, str]]:
            address = f"127.0.0.1:{free_port('127.0.0.1')}"
            port = address.rsplit(":", 1)[1]
            serve = ["serve", name, "--host", "127.0.0.1", "--port", port, "--engine-threads", "1"]
            return name, (containers.start(name, serve), address)

        # Containers are created side by side: each is a full copy of the image on vfs.
        with ThreadPoolExecutor(len(services)) as pool:
            started.update(pool.map(start, services))
        config = Path(tempfile.mkdtemp(prefix="visionmesh-e2e-")) / "gateway.yaml"
        config.write_text(
            yaml.safe_dump({"services": {spec.name: [started[spec.service][1]] for spec in specs}})
        )
        config.chmod(0o644)
        config.parent.chmod(0o755)
        gateway = f"127.0.0.1:{free_port('127.0.0.1')}"
        gateway_args = [
            "serve",
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            gateway.rsplit(":", 1)[1],
        ]
        gateway_args += ["--config", "/etc/visionmesh/gateway.yaml"]
        wait_serving(containers, started)
        cname = containers.start(
            "gateway", gateway_args, volumes=[f"{config}:/etc/visionmesh/gateway.yaml:ro"]
        )
        wait_serving(containers, {"gateway": (cname, gateway)})
        healthy_s = time.monotonic() - t0
        problems: list[str] = []
        with client.channel(gateway) as ch:
            stub = gateway_pb2_grpc.GatewayServiceStub(ch)
            wanted = [spec.enum for spec in specs]
            for path in (Path(args.photo), Path(args.clip)):
                result = client.analyze_path(
                    stub, path, wanted, gateway_pb2.AnalyzeOptions(), frames=0, timeout_s=120
                )
                print(client.render_text(path, result))
                problems += check_answer(path, result, [spec.result_field for spec in specs])
        print(
            f"e2e: {len(services) + 1} containers of {args.image}; all SERVING after "
            f"{healthy_s:.1f} s; total {time.monotonic() - t0:.1f} s"
        )
        for problem in problems:
            print(f"e2e: FAIL {problem}", file=sys.stderr)
        return 1 if problems else 0
    finally:
        containers.remove()


if __name__ == "__main__":
    sys.exit(main())
