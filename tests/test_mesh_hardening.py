"""The whole mesh (gateway + every service, separate processes) under mutual TLS, fed the fuzz
corpus.

One mesh serves every test here: certificates are made at test time, every
server requires a client certificate from the test CA, and the gateway
reaches the services with its own client certificate.

The fuzz run sends the seeded corpus (tests/fuzz_corpus.py) to the gateway and
straight to each service, many calls at once, and asserts what the edge
promises: no UNKNOWN or INTERNAL status (nor inside an answer's per-feature
errors), no process dies, and every error message says what was wrong without
leaking a file path or a traceback.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import tls
from services.common.config import ClientTlsConfig
from tests import fuzz_corpus
from tests.tls_certs import CertificateAuthority
from visionmesh.mesh import LocalMesh, MeshTls
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

# The mesh starts inside the first test that uses it: room for a slow, shared machine.
pytestmark = pytest.mark.timeout(900)

FORBIDDEN = {"UNKNOWN", "INTERNAL"}
# A file path, a Python source line or a traceback in a message meant for callers.
LEAK = re.compile(
    r"Traceback|File "
    r"\"|\.pyx?\b|site-packages|(?<![\w.])/(?:home|root|tmp|usr|work|var|opt|proc|etc|srv)/"
)
CONCURRENCY = 24
CALL_TIMEOUT_S = 120.0


@dataclass
class SecureMesh:
    mesh: LocalMesh
    client: ClientTlsConfig
    addresses: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def secure_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureMesh]:
    folder = tmp_path_factory.mktemp("mesh-tls")
    ca = CertificateAuthority.create("mesh")
    server_cert, server_key = ca.issue(folder, "server", server=True)
    client_cert, client_key = ca.issue(folder, "client", server=False)
    mesh_tls = MeshTls(
        ca_file=str(ca.write(folder)),
        server_cert_file=str(server_cert),
        server_key_file=str(server_key),
        client_cert_file=str(client_cert),
        client_key_file=str(client_key),
    )
    # The hash index lives in this test's folder, not in the checkout's var/hash.
    hash_dir = ["--set", f"storage.data_dir={folder / 'hash'}"]
    mesh = LocalMesh(
        tls=mesh_tls, reflection=False, log_dir=folder / "logs", extra_args={"hash": hash_dir}
    )
    mesh.start(timeout_s=240)
    try:
        if mesh.failed:
            pytest.fail(f"services did not start under mutual TLS: {mesh.failed}")
        addresses = {name: proc.address for name, proc in mesh.processes.items()}
        yield SecureMesh(mesh, mesh_tls.client(), addresses)
    finally:
        mesh.stop()


def _health_status(address: str, client: ClientTlsConfig) -> str:
    with tls.channel(address, client) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_whole_mesh_answers_over_mutual_tls(secure_mesh: SecureMesh, chelsea_jpeg: bytes) -> None:
    with tls.channel(secure_mesh.addresses["gateway"], secure_mesh.client) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        reply = stub.Analyze(
            gateway_pb2.AnalyzeRequest(image=common_pb2.Image(encoded=chelsea_jpeg)), timeout=120
        )
    # Every feature answered: the gateway reached every service with its client certificate.
    assert not reply.errors, reply.errors
    assert reply.classify.labels and reply.hash.code.bits
    assert reply.HasField("ocr") and reply.HasField("face")


def test_mesh_refuses_clients_without_a_valid_certificate(secure_mesh: SecureMesh) -> None:
    no_certificate = ClientTlsConfig(ca_file=secure_mesh.client.ca_file)
    for name, address in secure_mesh.addresses.items():
        assert _health_status(address, secure_mesh.client) == "SERVING", name
        assert _health_status(address, no_certificate) == "UNAVAILABLE", name
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as info:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, name


@dataclass
class FuzzReport:
    cases: int = 0
    seconds: float = 0.0
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    feature_codes: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)
    # (seconds, case name, method, status) of every call, for the slowest-case listing.
    timings: list[tuple[float, str, str, str]] = field(default_factory=list)
    # CPU seconds the mesh's processes spent during the run (what an idle machine needs).
    mesh_cpu_s: float = 0.0

    def check_message(self, case: fuzz_corpus.Case, code: str, message: str) -> None:
        if code in FORBIDDEN:
            self.problems.append(f"{case.name} -> {case.method}: {code} {message!r}")
        elif len(message.strip()) < 12:
            self.problems.append(
                f"{case.name} -> {case.method}: {code} says too little: {message!r}"
            )
        if LEAK.search(message):
            self.problems.append(f"{case.name} -> {case.method}: {code} leaks: {message!r}")


async def _send(channel: grpc.aio.Channel, case: fuzz_corpus.Case, report: FuzzReport) -> None:
    call = channel.unary_unary(case.method)  # bytes in, bytes out
    start = time.perf_counter()
    try:
        reply = await call(case.payload, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        report.timings.append((time.perf_counter() - start, case.name, case.method, code))
        report.codes[code] += 1
        report.check_message(case, code, exc.details() or "")
        return
    report.timings.append((time.perf_counter() - start, case.name, case.method, "OK"))
    report.codes["OK"] += 1
    if case.method == fuzz_corpus.ANALYZE:
        for error in gateway_pb2.AnalyzeResponse.FromString(reply).errors:
            report.feature_codes[error.code] += 1
            report.check_message(case, f"feature {error.code}", error.message)


def _cpu_seconds(mesh: LocalMesh) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in mesh.processes.values():
        try:
            fields = Path(f"/proc/{proc.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return total


async def run_fuzz(mesh: SecureMesh, cases: list[fuzz_corpus.Case]) -> FuzzReport:
    report = FuzzReport(cases=len(cases))
    cpu_before = _cpu_seconds(mesh.mesh)
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    channels = {
        name: tls.aio_channel(address, mesh.client, options)
        for name, address in mesh.addresses.items()
    }
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(case: fuzz_corpus.Case) -> None:
        async with gate:
            await _send(channels[case.target], case, report)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(one(case) for case in cases))
    finally:
        report.seconds = time.perf_counter() - start
        report.mesh_cpu_s = _cpu_seconds(mesh.mesh) - cpu_before
        await asyncio.gather(*(c.close() for c in channels.values()))
    return report


def _assert_fuzz_clean(mesh: SecureMesh, report: FuzzReport) -> None:
    print(
        f"\nfuzz: {report.cases} cases in {report.seconds:.1f} s "
        f"({report.cases / report.seconds:.0f}/s, load average {os.getloadavg()[0]:.1f}, "
        f"mesh CPU {report.mesh_cpu_s:.0f} s); statuses {dict(report.codes)}; "
        f"per-feature errors {dict(report.feature_codes)}"
    )
    by_method: collections.Counter[str] = collections.Counter()
    for seconds, _, method, code in report.timings:
        by_method[f"{method.rsplit('/', 1)[1]} {code}"] += seconds
    print("  call-seconds by rpc and status:", {k: round(v) for k, v in by_method.most_common(8)})
    for seconds, name, method, code in sorted(report.timings, reverse=True)[:8]:
        print(f"  slowest: {seconds:6.2f} s  {code:18s} {method}  {name}")
    dead = [name for name, proc in mesh.mesh.processes.items() if not proc.alive()]
    assert not dead, f"processes died during the fuzz run: {dead}"
    for name, address in mesh.addresses.items():
        assert _health_status(address, mesh.client) == "SERVING", f"{name} is not serving"
    assert not report.problems, f"{len(report.problems)} bad answers, first ones:\n" + "\n".join(
        report.problems[:25]
    )
    assert sum(report.codes.values()) == report.cases


async def test_fuzz_corpus_never_breaks_the_edge(secure_mesh: SecureMesh) -> None:
    cases = fuzz_corpus.corpus(2000)
    report = await run_fuzz(secure_mesh, cases)
    _assert_fuzz_clean(secure_mesh, report)
    # The corpus exercises both sides: refusals and real analyses.
    assert report.codes["INVALID_ARGUMENT"] > 1000 and report.codes["OK"] > 200


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_fuzz_corpus_10000_cases(secure_mesh: SecureMesh) -> None:
    cases = fuzz_corpus.corpus(10_000, seed=7)
    report = await run_fuzz(secure_mesh, cases)
    _assert_fuzz_clean(secure_mesh, report)


def test_corpus_is_reproducible_and_covers_every_kind() -> None:
    first, again = fuzz_corpus.corpus(400), fuzz_corpus.corpus(400)
    assert [c.payload for c in first] == [c.payload for c in again]
    names = " ".join(c.name for c in first)
    for kind in ("bitflip", "truncated", "bomb-", "aspect-", "raw-", "protobuf-", "budget-"):
        assert kind in names, kind
    assert {c.target for c in first} == {"gateway", "classify", "ocr", "face", "detect", "hash"}
    formats = {name.split("/")[0] for name in names.split()}
    for fmt in ("jpeg", "png", "gif", "bmp", "tiff", "webp"):
        assert any(f.startswith(fmt) for f in formats), fmt
