"""TLS and mutual TLS on a real server (the gateway, in-process): who is let in, and certificate
reload."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.main import DEFINITION as GATEWAY
from services.common import tls
from services.common.config import ClientTlsConfig, ConfigError, ServerTlsConfig
from services.common.net import free_port
from services.common.server import MeshServer
from tests.support import running_service
from tests.tls_certs import CertificateAuthority

ROOT = Path(__file__).resolve().parent.parent


class Pki:
    """A mesh CA with a server and a client certificate, and a stranger's CA with its own client."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = CertificateAuthority.create("mesh")
        self.ca_file = self.ca.write(folder)
        self.server_cert, self.server_key = self.ca.issue(folder, "server", server=True)
        self.client_cert, self.client_key = self.ca.issue(folder, "client", server=False)
        self.stranger = CertificateAuthority.create("stranger")
        self.stranger_ca_file = self.stranger.write(folder)
        self.stranger_cert, self.stranger_key = self.stranger.issue(folder, "client", server=False)

    def client(self, **changes: str) -> ClientTlsConfig:
        settings = {
            "ca_file": str(self.ca_file),
            "cert_file": str(self.client_cert),
            "key_file": str(self.client_key),
        }
        settings.update(changes)
        return ClientTlsConfig(**settings)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _server_tls(pki: Pki, folder: Path | None = None) -> dict[str, object]:
    cert, key = pki.server_cert, pki.server_key
    if folder is not None:  # a copy the reload test may overwrite
        cert, key = Path(shutil.copy(cert, folder)), Path(shutil.copy(key, folder))
    return {
        "cert_file": str(cert),
        "key_file": str(key),
        "ca_file": str(pki.ca_file),
        "require_client_cert": True,
    }


@pytest.fixture(scope="module")
async def mtls_gateway(pki: Pki) -> AsyncIterator[MeshServer]:
    dead = f"127.0.0.1:{free_port()}"
    overrides = {"services": {"classify": [dead]}, "server": {"tls": _server_tls(pki)}}
    async with running_service(GATEWAY, overrides) as gateway:
        yield gateway


async def _health(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(reply.status)


async def test_client_with_a_certificate_from_the_mesh_ca_is_served(
    mtls_gateway: MeshServer, pki: Pki
) -> None:
    async with tls.aio_channel(mtls_gateway.address, pki.client()) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    "who",
    ["plaintext", "TLS without a client certificate", "certificate from another CA"],
)
async def test_clients_without_a_valid_certificate_are_refused(
    mtls_gateway: MeshServer, pki: Pki, who: str
) -> None:
    if who == "plaintext":
        channel = grpc.aio.insecure_channel(mtls_gateway.address)
    elif who == "TLS without a client certificate":
        channel = tls.aio_channel(mtls_gateway.address, pki.client(cert_file="", key_file=""))
    else:
        channel = tls.aio_channel(
            mtls_gateway.address,
            pki.client(cert_file=str(pki.stranger_cert), key_file=str(pki.stranger_key)),
        )
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _health(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()


async def test_client_refuses_a_server_its_ca_did_not_sign(
    mtls_gateway: MeshServer, pki: Pki
) -> None:
    stranger_trust = pki.client(ca_file=str(pki.stranger_ca_file))
    async with tls.aio_channel(mtls_gateway.address, stranger_trust) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _health(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_picks_up_a_renewed_certificate_without_restart(
    pki: Pki, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    settings = _server_tls(pki, tmp_path)
    overrides = {"services": {"classify": [dead]}, "server": {"tls": settings}}
    renewed_ca = CertificateAuthority.create("renewed")
    renewed_ca_file = renewed_ca.write(tmp_path)
    renewed_cert, renewed_key = renewed_ca.issue(tmp_path, "server", server=True)
    trusts_renewed = pki.client(ca_file=str(renewed_ca_file))
    async with running_service(GATEWAY, overrides) as gateway:
        async with tls.aio_channel(gateway.address, trusts_renewed) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await _health(channel)
        # Rotate the files in place, as a Secret update does; the next handshake serves them.
        later = time.time() + 2
        for source, target in (
            (renewed_cert, settings["cert_file"]),
            (renewed_key, settings["key_file"]),
        ):
            shutil.copy(source, str(target))
            os.utime(str(target), (later, later))
        async with tls.aio_channel(gateway.address, trusts_renewed) as channel:
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_incomplete_tls_settings_are_refused_at_start(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="cert_file and key_file"):
        tls.server_credentials(ServerTlsConfig(cert_file=str(pki.server_cert)))
    with pytest.raises(ConfigError, match="require_client_cert needs"):
        tls.server_credentials(
            ServerTlsConfig(
                cert_file=str(pki.server_cert),
                key_file=str(pki.server_key),
                require_client_cert=True,
            )
        )
    with pytest.raises(ConfigError, match="cannot be read"):
        tls.channel_credentials(ClientTlsConfig(ca_file="/nonexistent/ca.pem"))


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "visionmesh.cli",
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_analyzes_over_mutual_tls_with_flags_or_environment(
    mtls_gateway: MeshServer, pki: Pki, chelsea_jpeg: bytes, tmp_path: Path
) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(chelsea_jpeg)
    base = ["analyze", str(photo), "--gateway", mtls_gateway.address, "--json"]
    base += ["--features", "classify"]
    flags = ["--tls-ca", str(pki.ca_file), "--tls-cert", str(pki.client_cert)]
    code, out, err = await _cli(*base, *flags, "--tls-key", str(pki.client_key))
    assert code == 0, err
    # The gateway answered; its classify service is absent, so that is a feature error.
    assert json.loads(out)["errors"][0]["code"] == "UNAVAILABLE"
    env = {
        "VISIONMESH_CLIENT__TLS__CA_FILE": str(pki.ca_file),
        "VISIONMESH_CLIENT__TLS__CERT_FILE": str(pki.client_cert),
        "VISIONMESH_CLIENT__TLS__KEY_FILE": str(pki.client_key),
    }
    code, out, err = await _cli(*base, env=env)
    assert code == 0, err
    code, _, err = await _cli(*base, "--tls-ca", str(pki.ca_file))  # no client certificate
    assert code == 1 and "UNAVAILABLE" in err, err
