"""A local mesh: every service and the gateway as separate processes on loopback.

Used by ``visionmesh up`` / ``demo``, by tests that kill a real service, and by
the load tests. Static discovery: the gateway is told each service's address.
Plaintext on loopback with server reflection on, unless ``tls`` is given: then
every server requires mutual TLS and the gateway and the health checks here
present the client certificate.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import tls as tlsmod
from services.common.config import ClientTlsConfig
from services.common.net import free_port
from visionmesh import registry

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class MeshTls:
    """PEM files for a mesh with mutual TLS: one CA, one server and one client certificate."""

    ca_file: str
    server_cert_file: str
    server_key_file: str
    client_cert_file: str
    client_key_file: str

    def client(self) -> ClientTlsConfig:
        return ClientTlsConfig(
            ca_file=self.ca_file, cert_file=self.client_cert_file, key_file=self.client_key_file
        )

    def environment(self) -> dict[str, str]:
        """The settings every process of the mesh gets (servers: mTLS; gateway: client side)."""
        return {
            "VISIONMESH_SERVER__TLS__CERT_FILE": self.server_cert_file,
            "VISIONMESH_SERVER__TLS__KEY_FILE": self.server_key_file,
            "VISIONMESH_SERVER__TLS__CA_FILE": self.ca_file,
            "VISIONMESH_SERVER__TLS__REQUIRE_CLIENT_CERT": "true",
            "VISIONMESH_CLIENT__TLS__CA_FILE": self.ca_file,
            "VISIONMESH_CLIENT__TLS__CERT_FILE": self.client_cert_file,
            "VISIONMESH_CLIENT__TLS__KEY_FILE": self.client_key_file,
        }


@dataclass
class ServiceProcess:
    name: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path
    # How this process is reached (health checks): plaintext unless the mesh uses TLS.
    tls: ClientTlsConfig = field(default_factory=ClientTlsConfig)

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class LocalMesh:
    services: list[str] = field(
        default_factory=lambda: [s for s in registry.available() if s != "gateway"]
    )
    host: str = "127.0.0.1"
    # Fixed ports (defaults of each service) or free ones (tests).
    fixed_ports: bool = False
    log_dir: Path | None = None
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    # Every service shares this machine: on a small one, one intra-op thread per
    # engine keeps a dozen models from crowding each other out (None = library default).
    engine_threads: int | None = field(
        default_factory=lambda: 1 if (os.cpu_count() or 1) <= 4 else None
    )
    # Calls the gateway has in flight to each service at most: every service shares this
    # machine's cores, so more at once only adds contention (0 = no limit).
    calls_per_instance: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Server reflection (grpcurl, grpcui): on for a local mesh, off by default elsewhere.
    reflection: bool = True
    tls: MeshTls | None = None
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def _port(self, name: str) -> int:
        return registry.definition(name).default_port if self.fixed_ports else free_port(self.host)

    def _spawn(self, name: str, port: int, args: list[str]) -> ServiceProcess:
        log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="visionmesh-logs-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        log_path = log_dir / f"{name}.log"
        cmd = [
            sys.executable,
            "-m",
            registry.service_modules()[name].rsplit(".", 1)[0],
            "--host",
            self.host,
            "--port",
            str(port),
            *args,
            *self.extra_args.get(name, []),
        ]
        env = dict(os.environ)
        env.setdefault("VISIONMESH_MODEL_REPOSITORY", str(ROOT / "model_repository"))
        env["VISIONMESH_SERVER__REFLECTION"] = "true" if self.reflection else "false"
        if self.tls is not None:
            env.update(self.tls.environment())
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        client = self.tls.client() if self.tls is not None else ClientTlsConfig()
        return ServiceProcess(name, f"{self.host}:{port}", proc, log_path, client)

    def start_service(self, name: str) -> ServiceProcess:
        """(Re)start one feature service on its address (kept across restarts)."""
        previous = self.processes.get(name)
        port = int(previous.address.rsplit(":", 1)[1]) if previous else self._port(name)
        args = [] if self.engine_threads is None else ["--engine-threads", str(self.engine_threads)]
        proc = self._spawn(name, port, args)
        self.processes[name] = proc
        return proc

    def start(self, timeout_s: float = 120.0) -> str:
        """Start services, wait until healthy, then the gateway; returns the gateway address.

        On failure everything already started is stopped again.
        """
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> str:
        for name in self.services:
            self.start_service(name)
        deadline = time.monotonic() + timeout_s
        for name in list(self.services):
            proc = self.processes[name]
            if not wait_healthy(proc, deadline):
                self.failed[name] = tail(proc.log_path)
                stop_process(proc)
                del self.processes[name]
        services = {name: [p.address] for name, p in self.processes.items()}
        config_path = (self.log_dir or Path(tempfile.mkdtemp())) / "gateway.yaml"
        # A service that is not running is left out: its features answer UNAVAILABLE ("no
        # instance known") at once, and the gateway does not redial a port nobody listens on
        # (every 0.5 s, its reconnect backoff) or one that another process may take later.
        config_path.write_text(
            yaml.safe_dump({"services": services, "calls_per_instance": self.calls_per_instance})
        )
        gateway = self._spawn("gateway", self._port("gateway"), ["--config", str(config_path)])
        self.processes["gateway"] = gateway
        if not wait_healthy(gateway, time.monotonic() + 60):
            raise RuntimeError(f"gateway did not become healthy:\n{tail(gateway.log_path)}")
        return gateway.address

    @property
    def gateway_address(self) -> str:
        return self.processes["gateway"].address

    def kill(self, name: str) -> None:
        """SIGKILL one service (failure tests)."""
        proc = self.processes[name]
        os.killpg(proc.process.pid, signal.SIGKILL)
        proc.process.wait(10)

    def stop(self) -> None:
        """SIGTERM everything (graceful drain), gateway first."""
        order = ["gateway", *[n for n in self.processes if n != "gateway"]]
        for name in order:
            if name in self.processes:
                stop_process(self.processes[name])
        self.processes.clear()

    def __enter__(self) -> LocalMesh:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_healthy(proc: ServiceProcess, deadline: float) -> bool:
    """Poll grpc.health.v1 until SERVING, the process dies, or the deadline passes."""
    with tlsmod.channel(proc.address, proc.tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not proc.alive():
                return False
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return False


def stop_process(proc: ServiceProcess, grace_s: float = 15.0) -> None:
    if proc.alive():
        proc.process.send_signal(signal.SIGTERM)
        try:
            proc.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.process.pid, signal.SIGKILL)
            proc.process.wait(5)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
