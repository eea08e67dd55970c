"""A seeded corpus of hostile requests for every RPC that takes an image.

``corpus(count, seed)`` returns ``count`` cases, each the exact bytes of one
request message and the RPC it goes to (the gateway, or a feature service
directly). The same seed always gives the same cases. What it makes:

* images of every format Pillow writes here, accepted (JPEG, PNG, GIF, BMP,
  TIFF, WebP, MPO) and not (AVIF, JPEG 2000, ICO, PCX, PPM, TGA, QOI, ...),
  in every mode that matters (16-bit, CMYK, palette, alpha, grey, float,
  animated), then truncated, bit-flipped, zeroed in stretches;
* decompression bombs in each accepted format (headers claiming huge
  dimensions over tiny data) and a real one (a 64 M-pixel PNG of zeros);
* extreme aspect ratios (1 x 20000 and past the side limit);
* raw-pixel messages with wrong byte counts, channels, strides and dimensions
  (zero, negative, 2^31 - 1, products past 32 bits);
* many frames whose pixels together exceed the per-request budget;
* options out of their ranges, unknown enum values;
* malformed protobuf: random bytes, truncated and bit-flipped requests,
  invalid UTF-8 in string fields, wrong wire types.

Images are small (at most 64 x 64 decoded) so that the cases that do decode
stay cheap to analyse.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

from visionmesh.v1 import (
    classify_pb2,
    common_pb2,
    detect_pb2,
    face_pb2,
    gateway_pb2,
    hash_pb2,
    ocr_pb2,
)

ANALYZE = "/visionmesh.v1.GatewayService/Analyze"
CLASSIFY = "/visionmesh.v1.ClassifyService/Classify"
RECOGNIZE = "/visionmesh.v1.OcrService/Recognize"
DETECT = "/visionmesh.v1.FaceService/Detect"
DETECT_OBJECTS = "/visionmesh.v1.DetectionService/DetectObjects"
ENCODE = "/visionmesh.v1.HashService/Encode"
SEARCH = "/visionmesh.v1.HashService/Search"

# Which process serves each RPC.
TARGETS = {
    ANALYZE: "gateway",
    CLASSIFY: "classify",
    RECOGNIZE: "ocr",
    DETECT: "face",
    DETECT_OBJECTS: "detect",
    ENCODE: "hash",
    SEARCH: "hash",
}
IMAGE_RPCS = (ANALYZE, ANALYZE, ANALYZE, CLASSIFY, RECOGNIZE, DETECT, DETECT_OBJECTS, ENCODE)


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    payload: bytes

    @property
    def target(self) -> str:
        return TARGETS[self.method]


def _picture(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth colour gradients with noise and a bright box: content every model can chew on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack(
        [x / max(width - 1, 1) * 255, y / max(height - 1, 1) * 255, (x + y) % 97 * 2.6], axis=-1
    )
    rgb += rng.normal(0, 12, rgb.shape)
    rgb[height // 4 : height // 2, width // 4 : width // 2] = 240
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@cache
def base_images() -> dict[str, bytes]:
    """Valid files: name -> bytes (accepted formats and modes first, then refused formats)."""
    rgb = Image.fromarray(_picture(48, 40, 1))
    grey = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(48, dtype=np.uint8) * 5, (40, 1))))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    wide16 = Image.fromarray((np.asarray(grey, np.uint16) * 257).astype(np.uint16))
    frames = [Image.fromarray(_picture(32, 32, s)).convert("P") for s in (2, 3)]
    images = {
        "jpeg": _save(rgb, "JPEG", quality=85),
        "jpeg-grey": _save(grey, "JPEG"),
        "jpeg-cmyk": _save(rgb.convert("CMYK"), "JPEG"),
        "jpeg-progressive": _save(rgb, "JPEG", progressive=True),
        "jpeg-exif-rotated": _exif_rotated(rgb),
        "mpo": _save(rgb, "MPO", save_all=True, append_images=[grey.convert("RGB")]),
        "png": _save(rgb, "PNG"),
        "png-16bit": _save(wide16, "PNG"),
        "png-palette": _save(palette, "PNG"),
        "png-alpha": _save(rgba, "PNG"),
        "png-grey-alpha": _save(rgba.convert("LA"), "PNG"),
        "png-1bit": _save(grey.convert("1"), "PNG"),
        "gif": _save(palette, "GIF"),
        "gif-animated": _save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "bmp": _save(rgb, "BMP"),
        "bmp-palette": _save(palette, "BMP"),
        "tiff": _save(rgb, "TIFF"),
        "tiff-cmyk": _save(rgb.convert("CMYK"), "TIFF"),
        "tiff-16bit": _save(wide16, "TIFF"),
        "tiff-float": _save(grey.convert("F"), "TIFF"),
        "tiff-deflate": _save(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "webp": _save(rgb, "WEBP", quality=80),
        "webp-lossless-alpha": _save(rgba, "WEBP", lossless=True),
    }
    refused: dict[str, Callable[[], bytes]] = {
        "ico": lambda: _save(rgb, "ICO"),
        "pcx": lambda: _save(rgb, "PCX"),
        "ppm": lambda: _save(rgb, "PPM"),
        "tga": lambda: _save(rgb, "TGA"),
        "sgi": lambda: _save(rgb, "SGI"),
        "im": lambda: _save(rgb, "IM"),
        "qoi": lambda: _save(rgb, "QOI"),
        "dds": lambda: _save(rgba, "DDS"),
        "blp": lambda: _save(palette, "BLP"),
        "msp": lambda: _save(grey.convert("1"), "MSP"),
        "xbm": lambda: _save(grey.convert("1"), "XBM"),
        "spider": lambda: _save(grey.convert("F"), "SPIDER"),
        "jpeg2000": lambda: _save(rgb, "JPEG2000"),
        "avif": lambda: _save(rgb, "AVIF"),
    }
    for name, make in refused.items():
        try:
            images[name] = make()
        except (OSError, KeyError, ValueError):  # an encoder this Pillow build lacks
            continue
    return images


def _exif_rotated(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    return _save(img, "JPEG", exif=exif.tobytes())


# -- decompression bombs: valid headers that claim huge dimensions ----------------


def _png_bomb(width: int, height: int) -> bytes:
    data = bytearray(base_images()["png"])
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _gif_bomb() -> bytes:
    data = bytearray(base_images()["gif"])
    struct.pack_into("<HH", data, 6, 65535, 65535)
    return bytes(data)


def _bmp_bomb() -> bytes:
    data = bytearray(base_images()["bmp"])
    struct.pack_into("<ii", data, 18, 30000, 30000)
    return bytes(data)


def _jpeg_bomb() -> bytes:
    data = bytearray(base_images()["jpeg"])
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 65000, 65000)
    return bytes(data)


def _webp_bomb() -> bytes:
    data = bytearray(base_images()["webp"])
    start = data.find(b"\x9d\x01\x2a")
    struct.pack_into("<HH", data, start + 3, 16383, 16383)
    return bytes(data)


def _tiff_bomb() -> bytes:
    data = bytearray(base_images()["tiff"])
    (ifd,) = struct.unpack_from("<I", data, 4)
    (entries,) = struct.unpack_from("<H", data, ifd)
    for i in range(entries):
        at = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", data, at)
        if tag in (256, 257):  # ImageWidth, ImageLength
            if kind == 3:
                struct.pack_into("<H", data, at + 8, 60000)
            else:
                struct.pack_into("<I", data, at + 8, 60000)
    return bytes(data)


@cache
def _real_png_bomb() -> bytes:
    # 64 M pixels of zeros compress to ~64 KB: over the per-image pixel limit.
    return _save(Image.new("L", (8000, 8000)), "PNG")


@cache
def _budget_frame() -> bytes:
    # 5000 x 5000 (25 M pixels) is within the per-image limit; three of them are not.
    return _save(Image.new("L", (5000, 5000)), "PNG")


def bombs() -> dict[str, bytes]:
    return {
        "bomb-png-header": _png_bomb(100_000, 100_000),
        "bomb-png-header-2^31": _png_bomb(2**31 - 1, 2**31 - 1),
        "bomb-gif-header": _gif_bomb(),
        "bomb-bmp-header": _bmp_bomb(),
        "bomb-jpeg-header": _jpeg_bomb(),
        "bomb-webp-header": _webp_bomb(),
        "bomb-tiff-header": _tiff_bomb(),
        "bomb-png-64mpx": _real_png_bomb(),
        "aspect-1x20000": _save(Image.new("RGB", (1, 20000), (90, 120, 200)), "PNG"),
        "aspect-20000x1": _save(Image.new("RGB", (20000, 1), (90, 120, 200)), "PNG"),
        "aspect-1x20001": _save(Image.new("L", (1, 20001)), "PNG"),
        "aspect-2x1": _save(Image.new("RGB", (2, 1)), "PNG"),
        "tiny-1x1": _save(Image.new("RGB", (1, 1)), "JPEG"),
    }


# -- mutations ----------------------------------------------------------------


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, max(1, len(data))))]


def _bitflip(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        at = int(rng.integers(0, len(out)))
        out[at] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def _zero_run(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    start = int(rng.integers(0, len(out)))
    length = int(rng.integers(1, max(2, len(out) // 8)))
    out[start : start + length] = bytes(min(length, len(out) - start))
    return bytes(out)


def _header_flip(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    at = int(rng.integers(0, min(64, len(out))))
    out[at] = int(rng.integers(0, 256))
    return bytes(out)


MUTATIONS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "truncated": _truncate,
    "bitflip": _bitflip,
    "zeroed": _zero_run,
    "header": _header_flip,
}


# -- raw pixel messages -------------------------------------------------------------


def raw_images(rng: np.random.Generator) -> dict[str, common_pb2.Image]:
    def raw(width: int, height: int, size: int) -> common_pb2.Image:
        pixels = rng.integers(0, 256, max(0, size), dtype=np.uint8).tobytes()
        return common_pb2.Image(raw=common_pb2.RawImage(width=width, height=height, rgb=pixels))

    w, h = int(rng.integers(1, 64)), int(rng.integers(1, 64))
    return {
        "raw-ok": raw(w, h, w * h * 3),
        "raw-one-byte-short": raw(w, h, w * h * 3 - 1),
        "raw-one-byte-long": raw(w, h, w * h * 3 + 1),
        "raw-rgba-channels": raw(w, h, w * h * 4),
        "raw-grey-channels": raw(w, h, w * h),
        "raw-padded-stride": raw(w, h, (w * 3 + 4) * h),
        "raw-swapped-dims": raw(h + 1, w, w * h * 3),
        "raw-zero-width": raw(0, h, 0),
        "raw-negative": raw(-w, h, w * h * 3),
        "raw-huge-dims": raw(2**31 - 1, 2**31 - 1, 12),
        "raw-32bit-overflow": raw(65536, 65536, 0),
        "raw-empty-pixels": raw(w, h, 0),
        "raw-no-source": common_pb2.Image(),
    }


# -- request builders ---------------------------------------------------------------


def _random_options(rng: np.random.Generator, wild: bool) -> gateway_pb2.AnalyzeOptions:
    def pick(good: list[float], bad: list[float]) -> float:
        pool = good + (bad if wild else [])
        return pool[int(rng.integers(0, len(pool)))]

    options = gateway_pb2.AnalyzeOptions(no_cache=bool(rng.integers(0, 2)))
    options.classify.top_k = int(pick([0, 1, 5], [-1, 1001, 2**31 - 1]))
    options.ocr.max_lines = int(pick([0, 3], [-5, 10**6]))
    options.ocr.min_confidence = pick([0.0, 0.5], [-0.1, 1.5, float("nan"), float("inf")])
    options.face.max_faces = int(pick([0, 2], [-1, 2**31 - 1]))
    options.face.min_face_size = pick([0.0, 20.0], [3.0, 1e30, float("-inf")])
    options.hash.bits = int(pick([0, 64, 128], [100, -64]))
    options.detect.min_score = pick([0.0, 0.4], [1.0, -0.5, float("nan")])
    options.detect.max_detections = int(pick([0, 10], [-1, 301]))
    options.hash.k = int(pick([0, 3], [-1, 5000]))
    if rng.integers(0, 4) == 0:
        options.hash.max_distance = int(pick([0, 10], [-1, 257]))
    return options


def _features(rng: np.random.Generator) -> list[int]:
    # Mostly one cheap feature: the point is every decode path, not full analyses.
    choice = int(rng.integers(0, 10))
    if choice == 0:
        return []  # every feature
    if choice == 1:
        return [common_pb2.FEATURE_CLASSIFY, 99]  # an unknown enum value
    known = [v.number for v in common_pb2.Feature.DESCRIPTOR.values if v.number]
    return [known[int(rng.integers(0, len(known)))]]


def image_request(
    method: str, image: common_pb2.Image, rng: np.random.Generator, wild_options: bool
) -> bytes:
    """The request bytes of ``method`` carrying ``image`` (and random, maybe out-of-range,
    options)."""
    opts = _random_options(rng, wild_options)
    if method == ANALYZE:
        request = gateway_pb2.AnalyzeRequest(image=image, features=_features(rng), options=opts)
        request.options.hash.collection = ""
        return request.SerializeToString()
    if method == CLASSIFY:
        return classify_pb2.ClassifyRequest(
            image=image, top_k=opts.classify.top_k
        ).SerializeToString()
    if method == RECOGNIZE:
        return ocr_pb2.RecognizeRequest(
            image=image, max_lines=opts.ocr.max_lines, min_confidence=opts.ocr.min_confidence
        ).SerializeToString()
    if method == DETECT:
        return face_pb2.DetectRequest(
            image=image, max_faces=opts.face.max_faces, min_face_size=opts.face.min_face_size
        ).SerializeToString()
    if method == DETECT_OBJECTS:
        return detect_pb2.DetectObjectsRequest(
            image=image,
            min_score=opts.detect.min_score,
            max_detections=opts.detect.max_detections,
        ).SerializeToString()
    if method == ENCODE:
        frames = [image] * int(rng.integers(1, 4))
        return hash_pb2.EncodeRequest(frames=frames, bits=opts.hash.bits).SerializeToString()
    raise ValueError(method)


def _invalid_utf8(rng: np.random.Generator) -> tuple[str, bytes]:
    bad = bytes([0xFF, 0xFE, 0xC0, 0x80][: int(rng.integers(1, 5))])
    if rng.integers(0, 2):
        # SearchRequest.collection (1) with invalid UTF-8.
        return SEARCH, b"\x0a" + bytes([len(bad)]) + bad
    # AnalyzeRequest.options (3) -> hash (4) -> collection (1).
    collection = b"\x0a" + bytes([len(bad)]) + bad
    hash_options = b"\x22" + bytes([len(collection)]) + collection
    return ANALYZE, b"\x1a" + bytes([len(hash_options)]) + hash_options


def _malformed(rng: np.random.Generator, valid: bytes, method: str) -> tuple[str, str, bytes]:
    kind = int(rng.integers(0, 6))
    if kind == 0:
        return "random", method, rng.integers(0, 256, int(rng.integers(1, 400)), np.uint8).tobytes()
    if kind == 1:
        return "truncated", method, valid[: int(rng.integers(1, max(2, len(valid))))]
    if kind == 2:
        return "bitflip", method, _bitflip(valid, rng)
    if kind == 3:
        utf_method, payload = _invalid_utf8(rng)
        return "utf8", utf_method, payload
    if kind == 4:
        # Field 1 with wire types 3/4/6/7 (groups, reserved) or a huge varint length.
        tails = [
            b"\x0b\x0c",
            b"\x0e",
            b"\x0f\x00",
            b"\x0a\xff\xff\xff\xff\x0f",
            b"\x08" + b"\xff" * 11,
        ]
        return "wiretype", method, tails[int(rng.integers(0, len(tails)))]
    # Deeply nested unknown groups: past any recursion limit.
    return "nested", method, b"\x0b" * 200 + b"\x0c" * 200


def corpus(count: int, seed: int = 20261127) -> list[Case]:
    """``count`` cases, deterministic for a seed; every kind appears whenever count >= 200."""
    rng = np.random.default_rng(seed)
    files = base_images()
    names = sorted(files)
    bomb_files = bombs()
    cases: list[Case] = []
    kinds = ["mutated"] * 4 + ["valid", "bomb", "raw", "raw", "malformed", "malformed"]
    i = 0
    while len(cases) < count:
        kind = "budget" if i % 40 == 39 else kinds[i % len(kinds)]
        method = IMAGE_RPCS[int(rng.integers(0, len(IMAGE_RPCS)))]
        if kind in ("mutated", "valid"):
            base = names[int(rng.integers(0, len(names)))]
            data = files[base]
            if kind == "mutated":
                mutation = sorted(MUTATIONS)[int(rng.integers(0, len(MUTATIONS)))]
                data = MUTATIONS[mutation](data, rng)
                name = f"{base}/{mutation}/{i}"
            else:
                name = f"{base}/{i}"
            image = common_pb2.Image(encoded=data)
            cases.append(Case(name, method, image_request(method, image, rng, i % 5 == 0)))
        elif kind == "bomb":
            bomb = sorted(bomb_files)[i // len(kinds) % len(bomb_files)]
            image = common_pb2.Image(encoded=bomb_files[bomb])
            cases.append(Case(f"{bomb}/{i}", method, image_request(method, image, rng, False)))
        elif kind == "raw":
            raws = raw_images(rng)
            which = sorted(raws)[int(rng.integers(0, len(raws)))]
            cases.append(
                Case(f"{which}/{i}", method, image_request(method, raws[which], rng, False))
            )
        elif kind == "malformed":
            valid = image_request(method, common_pb2.Image(encoded=files["png"]), rng, False)
            what, target, payload = _malformed(rng, valid, method)
            cases.append(Case(f"protobuf-{what}/{i}", target, payload))
        else:
            frames = [common_pb2.Image(encoded=_budget_frame())] * 3
            payload = hash_pb2.EncodeRequest(frames=frames).SerializeToString()
            cases.append(Case(f"budget-3x25mpx/{i}", ENCODE, payload))
        i += 1
    return cases
