"""A local Milvus on 127.0.0.1 for development, tests and benchmarks.

Two engines, both installed into their own venv by ``make setup-milvus``
(requirements-milvus.txt) and started here as plain processes -- the hash
service itself only needs pymilvus and a URI:

* ``standalone``: the PyPI ``milvus`` wheel's ``milvus run standalone`` (v2.3.5,
  embedded etcd + rocksmq, data on local disk). Its binaries ship
  lzma-compressed; they are unpacked once into ``var/milvus/bin-<version>``. Every
  component is told ``ip: 127.0.0.1`` and gets a free port, so nothing listens
  beyond loopback and two servers never collide.
* ``lite``: milvus-lite 2.5's C++ engine on one database file, served over TCP
  (what pymilvus does over a Unix socket when given a file path).

Run one by hand: ``python -m services.hash.milvus_local standalone --data-dir
var/milvus`` prints its URI and serves until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import lzma
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where make setup-milvus installs the server wheels (VISIONMESH_MILVUS_VENV overrides).
DEFAULT_VENV = ROOT / ".venv-milvus"
# Ports the standalone config template asks for (each component listens on its own).
TEMPLATE_PORTS = (
    "etcd_port",
    "root_coord_port",
    "proxy_port",
    "proxy_internal_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
)


class MilvusNotInstalled(RuntimeError):
    """The Milvus wheels are absent (run ``make setup-milvus``)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv() -> Path:
    return Path(os.environ.get("VISIONMESH_MILVUS_VENV") or DEFAULT_VENV)


def package_dir(name: str) -> Path:
    """The installed package folder ``name`` inside the Milvus venv."""
    found = sorted(venv().glob(f"lib/python3*/site-packages/{name}"))
    if not found:
        raise MilvusNotInstalled(
            f"{name} is not installed in {venv()}: run `make setup-milvus` "
            "(requirements-milvus.txt)"
        )
    return found[-1]


def _version(name: str) -> str:
    for info in package_dir(name).parent.glob(f"{name}-*.dist-info"):
        return info.name[len(name) + 1 : -len(".dist-info")]
    return "unknown"


def _unpacked_standalone_bin() -> Path:
    """The standalone server's binaries, decompressed once per version."""
    source = package_dir("milvus") / "data" / "bin"
    target = ROOT / "var" / "milvus" / f"bin-{_version('milvus')}"
    stamp = target / ".complete"
    if stamp.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for packed in sorted(source.glob("*.lzma")):
        out = target / packed.name[: -len(".lzma")]
        partial = out.with_suffix(out.suffix + ".partial")
        with lzma.open(packed) as src, partial.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        partial.chmod(0o755)
        partial.replace(out)
    stamp.touch()
    return target


def _render_standalone_config(data_dir: Path, ports: dict[str, int]) -> str:
    template = (package_dir("milvus") / "data" / "config.yaml.template").read_text()
    values: dict[str, str] = {k: str(v) for k, v in ports.items()}
    logs, storage = data_dir / "logs", data_dir / "data"
    values.update(
        etcd_log_path=str(logs / "etcd.log"),
        system_log_path=str(logs),
        etcd_data_dir=str(storage / "etcd.data"),
        local_storage_dir=str(storage),
        rocksmq_data_dir=str(storage / "rocksmq"),
        etcd_log_level="warn",
    )

    def fill(match: re.Match[str]) -> str:
        # {{ key }}, {{ key: default }}, {{ key(type): default }}
        key, _, default = match.group(1).partition(":")
        key = key.split("(")[0].strip()
        return values.get(key, default.strip())

    text = re.sub(r"\{\{(.*?)\}\}", fill, template)
    # The embedded etcd listens where its own file says (127.0.0.1:2379/2380 when none is
    # given, which two servers on one host cannot share).
    text = text.replace(
        "  use:\n    embed: true",
        f"  config:\n    path: {data_dir / 'configs' / 'embedEtcd.yaml'}\n  use:\n    embed: true",
        1,
    )
    # Each component advertises (and binds) the address it is given: loopback only.
    text = re.sub(r"(?m)^(\s+)ip:.*$", r"\1ip: 127.0.0.1", text)
    return text.replace("localhost", "127.0.0.1")


def _wait_tcp(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Milvus exited with {proc.returncode} during start-up; see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"Milvus did not listen on 127.0.0.1:{port} within {timeout:.0f} s; {log}")


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Milvus exited with {proc.returncode} during start-up; see {log}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                if reply.status == 200:
                    return
        time.sleep(0.25)
    raise TimeoutError(f"Milvus was not healthy at {url} within {timeout:.0f} s; see {log}")


class LocalMilvus:
    """One Milvus process on loopback; ``uri`` is what the hash service's config takes."""

    def __init__(self, kind: str, data_dir: Path, port: int = 0) -> None:
        if kind not in ("standalone", "lite"):
            raise ValueError(f"kind must be standalone or lite, got {kind!r}")
        self.kind = kind
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data_dir / "logs" / f"milvus-{kind}.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> LocalMilvus:
        """Start and wait (at most ``timeout`` seconds) until it serves."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "standalone":
            self._start_standalone(timeout)
        else:
            self._start_lite(timeout)
        return self

    def _spawn(self, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            # Its own process group: stop() reaches every child it forks.
            return subprocess.Popen(
                args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _start_standalone(self, timeout: float) -> None:
        binaries = _unpacked_standalone_bin()
        ports = {name: free_port() for name in TEMPLATE_PORTS}
        ports["proxy_port"] = self.port
        configs = self.data_dir / "configs"
        configs.mkdir(parents=True, exist_ok=True)
        (configs / "milvus.yaml").write_text(_render_standalone_config(self.data_dir, ports))
        client, peer = f"http://127.0.0.1:{ports['etcd_port']}", f"http://127.0.0.1:{free_port()}"
        (configs / "embedEtcd.yaml").write_text(
            f"name: standalone\ndata-dir: {self.data_dir / 'data' / 'etcd.data'}\n"
            f"listen-client-urls: {client}\nadvertise-client-urls: {client}\n"
            f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
            f"initial-cluster: standalone={peer}\n"
        )
        glog = package_dir("milvus") / "data" / "glog.conf"
        (configs / "glog.conf").write_bytes(glog.read_bytes())
        metrics = free_port()
        env = {
            **os.environ,
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(metrics),
            "MILVUSCONF": f"{configs}/",
            "MILVUS_RUN_DIR": str(self.data_dir / "run"),
            "LD_LIBRARY_PATH": f"{binaries}:{os.environ.get('LD_LIBRARY_PATH', '')}",
        }
        self.proc = self._spawn([str(binaries / "milvus"), "run", "standalone"], env, self.data_dir)
        _wait_healthy(f"http://127.0.0.1:{metrics}/healthz", self.proc, self.log, timeout)

    def _start_lite(self, timeout: float) -> None:
        lib = package_dir("milvus_lite") / "lib"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
        db_file = self.data_dir / "milvus.db"
        args = [str(lib / "milvus"), str(db_file), f"127.0.0.1:{self.port}", "ERROR"]
        self.proc = self._spawn(args, env, self.data_dir)
        _wait_tcp(self.port, self.proc, self.log, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash (tests of durability)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (the data is already durable)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def __enter__(self) -> LocalMilvus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(kind: str, data_dir: Path, timeout: float = 120.0) -> Iterator[LocalMilvus]:
    server = LocalMilvus(kind, data_dir)
    try:
        yield server.start(timeout)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("standalone", "lite"))
    parser.add_argument("--data-dir", type=Path, default=ROOT / "var" / "milvus")
    parser.add_argument("--port", type=int, default=19530)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    server = LocalMilvus(args.kind, args.data_dir, args.port)
    try:
        server.start(args.timeout)
    except (MilvusNotInstalled, RuntimeError, TimeoutError) as exc:
        server.stop()
        print(f"milvus_local: {exc}", file=sys.stderr)
        return 1
    print(f"Milvus {args.kind} serving at {server.uri} (data {server.data_dir}); Ctrl-C stops it")
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
