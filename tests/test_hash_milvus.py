"""The collection suite of the hash service on each backend: faiss + SQLite, milvus-lite and a
real Milvus standalone server (both Milvus variants: make setup-milvus, --run-milvus).

The same requests, the same answers and the same error codes on every backend;
only ``index.backend`` / ``index.milvus.uri`` differ. The Milvus server also
keeps every acknowledged Add through a SIGKILL of the hash service.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.common.protos import rgb_to_image
from services.hash import milvus_local
from services.hash.corpus import COPY_TRANSFORMS, load_photo
from services.hash.main import DEFINITION
from services.hash.milvus_backend import key_of, milvus_name
from tests.support import ROOT, running_service
from tests.test_hash_crash import (
    add_then_kill,
    assert_acknowledged_survive,
    code_for,
    free_port,
    stop,
    wait_serving,
)
from visionmesh.v1 import hash_pb2, hash_pb2_grpc

BACKENDS = [
    "faiss",
    pytest.param("milvus-lite", marks=pytest.mark.milvus),
    pytest.param("milvus-standalone", marks=pytest.mark.milvus),
]


def require_milvus(kind: str) -> None:
    try:
        milvus_local.package_dir("milvus" if kind == "standalone" else "milvus_lite")
    except milvus_local.MilvusNotInstalled as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module", params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Config overrides that put the hash service's collections on one backend."""
    name = request.param
    data = tmp_path_factory.mktemp(f"hash-{name}")
    if name == "faiss":
        yield {"storage": {"data_dir": str(data)}}
        return
    kind = name.removeprefix("milvus-")
    require_milvus(kind)
    with milvus_local.running(kind, data / "milvus", timeout=120) as server:
        # storage.data_dir is unused by this backend; set so nothing lands in var/hash.
        yield {
            "storage": {"data_dir": str(data / "unused")},
            "index": {"backend": "milvus", "milvus": {"uri": server.uri}},
        }


def isolated(overrides: dict[str, Any], tag: str, **limits: int) -> dict[str, Any]:
    """The same backend with a store of its own (another folder, or another Milvus prefix)."""
    changed = {**overrides, "limits": limits}
    data_dir = Path(overrides["storage"]["data_dir"]) / tag
    changed["storage"] = {"data_dir": str(data_dir)}
    if "index" in overrides:
        milvus = {**overrides["index"]["milvus"], "collection_prefix": f"{tag}_"}
        changed["index"] = {"backend": "milvus", "milvus": milvus}
    return changed


@contextlib.asynccontextmanager
async def service(overrides: dict[str, Any]) -> AsyncIterator[hash_pb2_grpc.HashServiceStub]:
    async with running_service(DEFINITION, overrides) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield hash_pb2_grpc.HashServiceStub(channel)


def code(value: bytes, bits: int = 128, method: str = "") -> hash_pb2.HashCode:
    return hash_pb2.HashCode(code=value, bits=bits, method=method)


def flipped(bits: int, flips: int) -> bytes:
    """A code ``flips`` bits away from the zero code."""
    ones = np.r_[np.ones(flips, np.uint8), np.zeros(bits - flips, np.uint8)]
    return np.packbits(ones).tobytes()


async def test_the_collection_suite(backend: dict[str, Any]) -> None:
    async with service(backend) as stub:
        rng = np.random.default_rng(5)
        codes = {f"item-{i}": rng.integers(0, 256, 16, dtype=np.uint8).tobytes() for i in range(40)}
        for item, value in codes.items():
            reply = await stub.Add(
                hash_pb2.AddRequest(collection="suite", id=item, code=code(value))
            )
            assert reply.id == item and not reply.replaced and reply.code.method == "itq"
        # Nearest: an exact copy first, distance 0, similarity 1.
        found = await stub.Search(
            hash_pb2.SearchRequest(collection="suite", code=code(codes["item-7"]), k=3)
        )
        assert [m.id for m in found.matches][0] == "item-7" and len(found.matches) == 3
        assert found.matches[0].distance == 0 and found.matches[0].similarity == 1.0
        distances = [m.distance for m in found.matches]
        assert distances == sorted(distances)
        # k = 0 is the default (10); k past the collection's size answers what there is.
        assert (
            len(
                (
                    await stub.Search(
                        hash_pb2.SearchRequest(collection="suite", code=code(codes["item-1"]))
                    )
                ).matches
            )
            == 10
        )  # noqa: E501
        # Replace, get, delete (idempotent), and the search no longer finds it.
        again = await stub.Add(
            hash_pb2.AddRequest(collection="suite", id="item-3", code=code(codes["item-4"]))
        )
        assert again.replaced
        got = await stub.Get(hash_pb2.GetRequest(collection="suite", id="item-3"))
        assert got.found and got.code.code == codes["item-4"] and got.code.bits == 128
        assert (await stub.Delete(hash_pb2.DeleteRequest(collection="suite", id="item-4"))).deleted
        assert not (
            await stub.Delete(hash_pb2.DeleteRequest(collection="suite", id="item-4"))
        ).deleted
        assert not (await stub.Get(hash_pb2.GetRequest(collection="suite", id="item-4"))).found
        assert not (await stub.Get(hash_pb2.GetRequest(collection="nowhere", id="x"))).found
        assert not (await stub.Delete(hash_pb2.DeleteRequest(collection="nowhere", id="x"))).deleted
        found = await stub.Search(
            hash_pb2.SearchRequest(collection="suite", code=code(codes["item-4"]), k=2)
        )
        assert [(m.id, m.distance) for m in found.matches][0] == ("item-3", 0)
        assert "item-4" not in [m.id for m in found.matches]

        # Radius search: exactly the items within, nearest first (64-bit codes).
        for flips in range(6):
            await stub.Add(
                hash_pb2.AddRequest(
                    collection="radius", id=f"d{flips}", code=code(flipped(64, flips), 64)
                )
            )
        reply = await stub.Search(
            hash_pb2.SearchRequest(collection="radius", code=code(bytes(8), 64), max_distance=3)
        )
        assert [(m.id, m.distance) for m in reply.matches] == [(f"d{d}", d) for d in range(4)]

        # Any id (quotes, backslashes, newlines, non-ASCII) is stored and found as given.
        for odd in ("it's", 'say "hi"', "back\\slash", "two\nlines", "café ☕ 😀"):
            await stub.Add(
                hash_pb2.AddRequest(
                    collection="ids", id=odd, code=code(odd.encode()[:16].ljust(16, b"-"))
                )
            )  # noqa: E501
            got = await stub.Get(hash_pb2.GetRequest(collection="ids", id=odd))
            assert got.found, odd
            hit = await stub.Search(hash_pb2.SearchRequest(collection="ids", code=got.code, k=1))
            assert hit.matches[0].id == odd
            assert (await stub.Delete(hash_pb2.DeleteRequest(collection="ids", id=odd))).deleted

        # Bad input answers the same codes on every backend.
        for call, request_, status in (
            (
                "Add",
                hash_pb2.AddRequest(collection="suite", id="x", code=code(b"\0" * 8, 64)),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),  # noqa: E501
            (
                "Add",
                hash_pb2.AddRequest(collection="suite", id="x", code=code(b"\0" * 15)),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),  # noqa: E501
            (
                "Add",
                hash_pb2.AddRequest(collection="suite", id="x" * 513, code=code(b"\0" * 16)),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),  # noqa: E501
            (
                "Add",
                hash_pb2.AddRequest(collection="bad name!", id="x", code=code(b"\0" * 16)),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),  # noqa: E501
            (
                "Add",
                hash_pb2.AddRequest(
                    collection="suite", id="x", code=code(b"\0" * 16, method="lsh")
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),  # noqa: E501
            (
                "Search",
                hash_pb2.SearchRequest(collection="missing", code=code(b"\0" * 16)),
                grpc.StatusCode.NOT_FOUND,
            ),  # noqa: E501
            (
                "Search",
                hash_pb2.SearchRequest(collection="suite", code=code(b"\0" * 16), k=1001),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),  # noqa: E501
            (
                "Search",
                hash_pb2.SearchRequest(
                    collection="radius", code=code(b"\0" * 8, 64), max_distance=65
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),  # noqa: E501
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await getattr(stub, call)(request_)
            assert err.value.code() == status, (call, err.value.details())
            assert err.value.details()
        # Whatever was refused, writes go on.
        assert (
            await stub.Add(
                hash_pb2.AddRequest(collection="suite", id="after", code=code(bytes(16)))
            )
        ).id == "after"  # noqa: E501


async def test_limits_and_restart(backend: dict[str, Any]) -> None:
    overrides = isolated(backend, "limits", max_collections=2, max_items_per_collection=2)

    async def add(stub: hash_pb2_grpc.HashServiceStub, collection: str, item: str) -> bool:
        reply = await stub.Add(
            hash_pb2.AddRequest(
                collection=collection, id=item, code=code(code_for(hash(item) % 997))
            )
        )
        return reply.replaced

    before = REGISTRY.get_sample_value("visionmesh_hash_rejected_total", {"reason": "limit"}) or 0
    async with service(overrides) as stub:
        await add(stub, "lim-a", "1")
        await add(stub, "lim-a", "2")
        assert await add(stub, "lim-a", "2")  # a replacement is not a new item
        await add(stub, "lim-b", "1")
        for collection, item, what in (
            ("lim-a", "3", "max_items"),
            ("lim-c", "1", "max_collections"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await add(stub, collection, item)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert what in (err.value.details() or "")
        after = REGISTRY.get_sample_value("visionmesh_hash_rejected_total", {"reason": "limit"})
        assert after == before + 2
        assert (await stub.Delete(hash_pb2.DeleteRequest(collection="lim-a", id="1"))).deleted
        await add(stub, "lim-a", "3")  # room again
    # A restart finds everything where it was, and the counts that limits are checked against.
    async with service(overrides) as stub:
        for item, present in (("1", False), ("2", True), ("3", True)):
            got = await stub.Get(hash_pb2.GetRequest(collection="lim-a", id=item))
            assert got.found == present, item
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await add(stub, "lim-a", "4")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_the_exact_copy_tier(backend: dict[str, Any]) -> None:
    """PDQ codes beside the deep codes: pixel-level copies answer from the exact tier first,
    crops from the deep code; codes travel through Encode / Add / Search / Get; a replacement
    or a delete leaves no stale exact-tier code behind."""
    photos = {name: load_photo(name) for name in ("chelsea", "astronaut", "coffee", "rocket")}
    async with service(isolated(backend, "exact", max_collections=1)) as stub:
        for name, rgb in photos.items():
            added = await stub.Add(
                hash_pb2.AddRequest(collection="shots", id=name, frames=[rgb_to_image(rgb)])
            )
            assert added.exact_code.bits == 256 and added.exact_code.method == "pdq"

        async def search(rgb: np.ndarray, **fields: Any) -> hash_pb2.SearchResponse:
            return await stub.Search(
                hash_pb2.SearchRequest(collection="shots", frames=[rgb_to_image(rgb)], **fields)
            )

        for edit in ("jpeg_q30", "resize_x0.5", "brightness_x1.3", "grey"):
            reply = await search(COPY_TRANSFORMS[edit](photos["coffee"]), k=2)
            top = reply.matches[0]
            assert top.id == "coffee" and top.HasField("exact_distance"), (edit, reply)
            assert top.exact_distance <= 31 and reply.query_exact_code.bits == 256
            assert not reply.matches[1].HasField("exact_distance"), edit
        # A 90 % crop moves PDQ far; the deep code still puts the original first.
        cropped = await search(COPY_TRANSFORMS["crop_90"](photos["astronaut"]), k=1)
        assert cropped.matches[0].id == "astronaut", cropped
        # A picture not in the collection has no exact-tier match, even in a radius search.
        other = await search(load_photo("camera"), max_distance=128)
        assert not any(m.HasField("exact_distance") for m in other.matches)
        # The tier holds no collection slot of its own: the limit of 1 is "shots".
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Add(
                hash_pb2.AddRequest(
                    collection="more", id="a", frames=[rgb_to_image(photos["coffee"])]
                )
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # Codes travel: Encode gives both, Add and Search take both.
        encoded = await stub.Encode(
            hash_pb2.EncodeRequest(
                frames=[rgb_to_image(COPY_TRANSFORMS["jpeg_q30"](photos["chelsea"]))]
            )
        )
        by_code = await stub.Search(
            hash_pb2.SearchRequest(
                collection="shots", code=encoded.code, exact_code=encoded.exact_code, k=1
            )
        )
        assert by_code.matches[0].id == "chelsea" and by_code.matches[0].HasField("exact_distance")
        got = await stub.Get(hash_pb2.GetRequest(collection="shots", id="chelsea"))
        assert got.found and len(got.exact_code.code) == 32
        # Replacing with a code alone drops the old exact-tier code; so does a delete.
        await stub.Add(hash_pb2.AddRequest(collection="shots", id="chelsea", code=encoded.code))
        got = await stub.Get(hash_pb2.GetRequest(collection="shots", id="chelsea"))
        assert got.found and not got.HasField("exact_code")
        again = await stub.Search(
            hash_pb2.SearchRequest(
                collection="shots", code=encoded.code, exact_code=encoded.exact_code, k=4
            )
        )
        assert not any(m.HasField("exact_distance") for m in again.matches)
        assert (await stub.Delete(hash_pb2.DeleteRequest(collection="shots", id="coffee"))).deleted
        gone = await search(COPY_TRANSFORMS["jpeg_q30"](photos["coffee"]), k=4)
        assert "coffee" not in [m.id for m in gone.matches]
        assert not any(m.HasField("exact_distance") for m in gone.matches)

        # A video (several frames) and a flat picture have no exact-tier code.
        video = await stub.Encode(
            hash_pb2.EncodeRequest(frames=[rgb_to_image(photos["coffee"])] * 2)
        )
        flat = await stub.Encode(
            hash_pb2.EncodeRequest(frames=[rgb_to_image(np.full((64, 64, 3), 90, np.uint8))])
        )
        assert not video.HasField("exact_code") and not flat.HasField("exact_code")

        # Bad exact codes are refused, naming the field.
        for request_ in (
            hash_pb2.AddRequest(collection="shots", id="x", exact_code=encoded.exact_code),
            hash_pb2.AddRequest(
                collection="shots", id="x", code=encoded.code, exact_code=code(bytes(16), 128)
            ),
            hash_pb2.AddRequest(
                collection="shots",
                id="x",
                code=encoded.code,
                exact_code=code(bytes(32), 256, method="itq"),
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Add(request_)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "exact_code" in (err.value.details() or "")


def test_milvus_names_and_keys_are_distinct_and_stable() -> None:
    names = {milvus_name("visionmesh_", n) for n in ("a.b", "a-b", "a_b", "A.b")}
    assert len(names) == 4 and all(
        n.startswith("visionmesh_a") or n.startswith("visionmesh_A") for n in names
    )
    assert all(len(milvus_name("p_", "x" * 128)) <= 255 for _ in range(1))
    assert key_of("item-1") == key_of("item-1") != key_of("item-2")
    assert -(2**63) <= key_of("z") < 2**63


def test_a_milvus_backend_without_a_uri_is_refused_at_start() -> None:
    from services.common import config as cfgmod
    from services.common.config import ConfigError
    from services.hash.backend import check
    from services.hash.config import HashConfig

    for overrides, words in (
        ({"index": {"backend": "milvus"}}, "index.milvus.uri"),
        ({"index": {"backend": "qdrant"}}, "index.backend"),
        (
            {"index": {"backend": "milvus", "milvus": {"uri": "http://x", "index_type": "HNSW"}}},
            "index_type",
        ),  # noqa: E501
        (
            {
                "index": {
                    "backend": "milvus",
                    "milvus": {"uri": "http://x", "consistency_level": "Weak"},
                }
            },
            "consistency_level",
        ),  # noqa: E501
    ):
        config = cfgmod.load(HashConfig, environ={}, overrides=overrides)
        with pytest.raises(ConfigError, match=words):
            check(config)


def start_service(port: int, uri: str, log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "services.hash", "--port", str(port)]
    args += ["--set", "index.backend=milvus", "--set", f"index.milvus.uri={uri}"]
    args += ["--set", f"storage.data_dir={log.parent / 'unused'}"]
    return subprocess.Popen(args, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT)


@pytest.mark.milvus
async def test_sigkill_of_the_service_loses_no_acknowledged_add_held_by_milvus(
    tmp_path: Path,
) -> None:
    require_milvus("standalone")
    with milvus_local.running("standalone", tmp_path / "milvus", timeout=120) as server:
        port, log = free_port(), tmp_path / "service.log"
        proc = start_service(port, server.uri, log)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await wait_serving(channel, proc, timeout=120)
                stub = hash_pb2_grpc.HashServiceStub(channel)
                # 16 writers keep Adds in flight, so the kill lands in the middle of batches.
                sent, acknowledged = await add_then_kill(stub, proc, 300, timeout=20.0)
            proc.wait(10)

            proc = start_service(port, server.uri, log)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await wait_serving(channel, proc, timeout=120)
                stub = hash_pb2_grpc.HashServiceStub(channel)
                await assert_acknowledged_survive(stub, sent, acknowledged)
        finally:
            stop(proc)
