"""Client side of the gateway: build requests from files, render answers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from services.common import config as cfgmod
from services.common import tls as tlsmod
from services.common.config import ClientConfig, ClientTlsConfig
from visionmesh import features as feature_table
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".flv"}
CHUNK_BYTES = 1024 * 1024


def parse_features(text: str) -> list[common_pb2.Feature]:
    """``"classify,ocr"`` -> the features' enum values (names from the feature table)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = feature_table.names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown}; choose from {', '.join(known)}")
    return [feature_table.by_name(n).enum for n in names]  # type: ignore[misc]


def feature_name(value: int) -> str:
    spec = feature_table.by_enum(value)
    return spec.name if spec is not None else str(value)


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def video_messages(
    path: Path, header: gateway_pb2.VideoUploadHeader
) -> Iterator[gateway_pb2.AnalyzeVideoRequest]:
    """The header first, then the file in 1 MiB chunks (files past the 4 MB message limit work)."""
    header.filename = path.name
    header.total_size = path.stat().st_size
    yield gateway_pb2.AnalyzeVideoRequest(header=header)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield gateway_pb2.AnalyzeVideoRequest(chunk=chunk)


# The gateway's Analyze limit (a 32 MiB image plus headroom); answers are far smaller.
MAX_MESSAGE_BYTES = 33 * 1024 * 1024


def tls_settings(environ: Mapping[str, str], **flags: str | None) -> ClientTlsConfig:
    """``client.tls`` from the environment (``VISIONMESH_CLIENT__TLS__*``), flags winning."""
    try:
        cfg = cfgmod.load(ClientSettings, environ=environ)
    except cfgmod.ConfigError as exc:
        raise ValueError(str(exc)) from None
    chosen = {k: v for k, v in flags.items() if v is not None}
    return cfgmod.merge(cfg.client.tls, chosen) if chosen else cfg.client.tls


@dataclass
class ClientSettings:
    client: ClientConfig = field(default_factory=ClientConfig)


def channel(address: str, tls: ClientTlsConfig | None = None) -> grpc.Channel:
    """A channel to the gateway: TLS when ``tls.ca_file`` is set, else plaintext."""
    return tlsmod.channel(
        address,
        tls or ClientTlsConfig(),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )


def analyze_path(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    path: Path,
    features: list[common_pb2.Feature],
    options: gateway_pb2.AnalyzeOptions,
    frames: int,
    timeout_s: float,
) -> gateway_pb2.AnalyzeResponse | gateway_pb2.AnalyzeVideoResponse:
    if is_video(path):
        header = gateway_pb2.VideoUploadHeader(
            features=features, options=options, num_frames=frames
        )
        return stub.AnalyzeVideo(video_messages(path, header), timeout=timeout_s)
    request = gateway_pb2.AnalyzeRequest(
        image=common_pb2.Image(encoded=path.read_bytes()), features=features, options=options
    )
    return stub.Analyze(request, timeout=timeout_s)


def to_json(result: Any) -> dict[str, Any]:
    """Proto -> dict with field names as in the proto (tags, classify, ocr, face, hash, errors)."""
    data: dict[str, Any] = json_format.MessageToDict(
        result, preserving_proto_field_name=True, always_print_fields_with_no_presence=False
    )
    data.setdefault("tags", [])
    data.setdefault("errors", [])
    for err in data["errors"]:
        if isinstance(err.get("feature"), str):
            err["feature"] = err["feature"].removeprefix("FEATURE_").lower()
    return data


def render_text(path: Path, result: Any, top: int = 10) -> str:
    lines = [f"== {path}"]
    if isinstance(result, gateway_pb2.AnalyzeVideoResponse):
        v = result.video
        lines.append(
            f"   video {v.width}x{v.height} {v.codec} {v.duration_s:.1f}s, "
            f"{v.keyframes_decoded} keyframes decoded, {v.frames_analyzed} analysed"
        )
    for tag in list(result.tags)[:top]:
        zh = f" ({tag.display_name_zh})" if tag.display_name_zh else ""
        lines.append(f"   {tag.score:6.3f}  {tag.name}{zh}  [{tag.source}]")
    if isinstance(result, gateway_pb2.AnalyzeResponse):
        if result.HasField("ocr") and result.ocr.full_text:
            lines.append("   text: " + result.ocr.full_text.replace("\n", " | "))
        if result.HasField("face"):
            lines.append(f"   faces: {len(result.face.faces)}")
        if result.HasField("detect"):
            lines.append(f"   people: {result.detect.people_count}")
    else:
        if result.text_lines:
            lines.append("   text: " + " | ".join(t.line.text for t in result.text_lines))
        if any(f.result.HasField("detect") for f in result.frames):
            counts = ", ".join(
                f"{f.timestamp_s:.1f}s {f.result.detect.people_count}" for f in result.frames
            )
            lines.append(f"   people: at most {result.people_count} ({counts})")
    if result.HasField("hash") and result.hash.code.bits:
        found = (
            ", ".join(
                f"{m.id} ({m.distance} bits apart"
                + (f", exact copy: PDQ {m.exact_distance}" if m.HasField("exact_distance") else "")
                + ")"
                for m in result.hash.near_duplicates
            )
            or "none"
        )
        lines.append(
            f"   hash: {result.hash.code.bits} bits {result.hash.code.code.hex()}  "
            f"most similar indexed: {found}"
        )
    for err in result.errors:
        lines.append(f"   error {feature_name(err.feature)}: {err.code} {err.message}")
    return "\n".join(lines)
