"""HashService end to end on real photos: codes, CRUD, radius search, video codes, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from services.common.protos import rgb_to_image
from services.hash.corpus import COPY_TRANSFORMS, load_photo
from services.hash.main import DEFINITION
from services.hash.projection import hamming
from tests.support import running_service
from visionmesh.v1 import common_pb2, hash_pb2, hash_pb2_grpc


@pytest.fixture(scope="module")
async def stub(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[hash_pb2_grpc.HashServiceStub]:
    data_dir = tmp_path_factory.mktemp("hash-data")
    async with running_service(DEFINITION, {"storage": {"data_dir": str(data_dir)}}) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield hash_pb2_grpc.HashServiceStub(channel)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: load_photo(name) for name in ("chelsea", "astronaut", "coffee", "rocket")}


async def encode(
    stub: hash_pb2_grpc.HashServiceStub, *frames: np.ndarray, bits: int = 128
) -> np.ndarray:
    reply = await stub.Encode(
        hash_pb2.EncodeRequest(frames=[rgb_to_image(f) for f in frames], bits=bits)
    )
    assert (
        reply.code.bits == bits and len(reply.code.code) == bits // 8 and reply.code.method == "itq"
    )
    return np.frombuffer(reply.code.code, np.uint8)


@pytest.mark.regression  # the served projection was trained on these photos
async def test_regression_training_photos_copies_are_close_and_different_photos_far(
    stub: hash_pb2_grpc.HashServiceStub, photos: dict[str, np.ndarray]
) -> None:
    chelsea = await encode(stub, photos["chelsea"])
    copies = [
        await encode(stub, COPY_TRANSFORMS[t](photos["chelsea"]))
        for t in ("jpeg_q30", "hflip", "crop_90", "text_overlay")
    ]
    others = [await encode(stub, photos[n]) for n in ("astronaut", "coffee", "rocket")]
    near = hamming(chelsea, np.stack(copies))
    far = hamming(chelsea, np.stack(others))
    assert near.max() < far.min(), (near, far)
    # Whitened ITQ spreads information evenly over the bits: unrelated photos land near bits/2 (64),
    # copies well below it (measured on the greyscale, bar-trimmed view: copies 31-51 -- the large
    # caption is the farthest -- others 62-67 of 128).
    assert near.max() <= 52 and far.min() >= 58, (near.tolist(), far.tolist())


async def test_encoded_image_bytes_give_the_same_code_as_raw(
    stub: hash_pb2_grpc.HashServiceStub, photos: dict[str, np.ndarray]
) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(photos["rocket"]).save(buf, "PNG")
    reply = await stub.Encode(
        hash_pb2.EncodeRequest(frames=[common_pb2.Image(encoded=buf.getvalue())], bits=64)
    )
    assert np.array_equal(
        np.frombuffer(reply.code.code, np.uint8), await encode(stub, photos["rocket"], bits=64)
    )


async def test_add_search_get_delete(
    stub: hash_pb2_grpc.HashServiceStub, photos: dict[str, np.ndarray]
) -> None:
    for name, rgb in photos.items():
        reply = await stub.Add(
            hash_pb2.AddRequest(collection="crud", id=name, frames=[rgb_to_image(rgb)])
        )
        assert reply.id == name and reply.code.bits == 128 and not reply.replaced
    query = [rgb_to_image(COPY_TRANSFORMS["resize_x0.5"](photos["coffee"]))]
    found = await stub.Search(hash_pb2.SearchRequest(collection="crud", frames=query, k=2))
    assert [m.id for m in found.matches][0] == "coffee" and len(found.matches) == 2
    assert found.matches[0].similarity == pytest.approx(1 - found.matches[0].distance / 128)
    got = await stub.Get(hash_pb2.GetRequest(collection="crud", id="rocket"))
    assert got.found and got.code.bits == 128
    # Adding the same id again replaces it.
    again = await stub.Add(hash_pb2.AddRequest(collection="crud", id="rocket", code=got.code))
    assert again.replaced
    assert (await stub.Delete(hash_pb2.DeleteRequest(collection="crud", id="coffee"))).deleted
    assert not (await stub.Delete(hash_pb2.DeleteRequest(collection="crud", id="coffee"))).deleted
    assert not (await stub.Get(hash_pb2.GetRequest(collection="crud", id="coffee"))).found
    assert not (await stub.Get(hash_pb2.GetRequest(collection="no-such-collection", id="x"))).found
    found = await stub.Search(hash_pb2.SearchRequest(collection="crud", frames=query, k=10))
    assert "coffee" not in [m.id for m in found.matches] and len(found.matches) == 3


async def test_radius_search_returns_exactly_the_items_within(
    stub: hash_pb2_grpc.HashServiceStub,
) -> None:
    base = np.zeros(8, np.uint8)
    for flips in range(6):  # item d<k> is k bits from the zero code
        code = np.packbits(np.r_[np.ones(flips, np.uint8), np.zeros(64 - flips, np.uint8)])
        await stub.Add(
            hash_pb2.AddRequest(
                collection="radius",
                id=f"d{flips}",
                code=hash_pb2.HashCode(code=code.tobytes(), bits=64),
            )
        )
    reply = await stub.Search(
        hash_pb2.SearchRequest(
            collection="radius",
            code=hash_pb2.HashCode(code=base.tobytes(), bits=64),
            max_distance=3,
        )
    )
    assert [(m.id, m.distance) for m in reply.matches] == [
        ("d0", 0),
        ("d1", 1),
        ("d2", 2),
        ("d3", 3),
    ]


async def test_video_code_sits_with_its_frames(
    stub: hash_pb2_grpc.HashServiceStub, photos: dict[str, np.ndarray]
) -> None:
    # A "video" of chelsea frames (small pans and a JPEG'd frame): one code near the photo's, far
    # from others.
    frames = [photos["chelsea"][:, i : i + 380] for i in (0, 30, 60)] + [
        COPY_TRANSFORMS["jpeg_q30"](photos["chelsea"])
    ]
    video = await encode(stub, *frames)
    photo = await encode(stub, photos["chelsea"])
    others = np.stack([await encode(stub, photos[n]) for n in ("astronaut", "coffee", "rocket")])
    assert hamming(photo, video[None])[0] < hamming(video, others).min()


def code_msg(nbytes: int, bits: int) -> hash_pb2.HashCode:
    return hash_pb2.HashCode(code=b"\x00" * nbytes, bits=bits)


@pytest.mark.parametrize(
    ("call", "request_", "status"),
    [
        ("Encode", hash_pb2.EncodeRequest(), grpc.StatusCode.INVALID_ARGUMENT),  # no image
        (
            "Encode",
            hash_pb2.EncodeRequest(frames=[common_pb2.Image(encoded=b"not an image")]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "Encode",
            hash_pb2.EncodeRequest(frames=[common_pb2.Image()]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "Encode",
            hash_pb2.EncodeRequest(frames=[rgb_to_image(np.zeros((8, 8, 3), np.uint8))], bits=100),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "Add",
            hash_pb2.AddRequest(collection="bad", id="x", code=code_msg(15, 128)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),  # wrong length
        (
            "Add",
            hash_pb2.AddRequest(collection="bad", id="", code=code_msg(16, 128)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "Add",
            hash_pb2.AddRequest(collection="bad name!", id="x", code=code_msg(16, 128)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "Add",
            hash_pb2.AddRequest(collection="bad", id="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),  # neither code nor frames
        (
            "Add",
            hash_pb2.AddRequest(collection="radius", id="x", code=code_msg(16, 128)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),  # 64-bit collection
        (
            "Search",
            hash_pb2.SearchRequest(collection="missing", code=code_msg(16, 128)),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "Search",
            hash_pb2.SearchRequest(collection="radius", code=code_msg(8, 64), k=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "Search",
            hash_pb2.SearchRequest(collection="radius", code=code_msg(8, 64), max_distance=65),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ("Search", hash_pb2.SearchRequest(collection="radius"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            "Add",
            hash_pb2.AddRequest(
                collection="bad",
                id="x",
                code=hash_pb2.HashCode(code=b"\0" * 16, bits=128, method="m" * 256),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),  # used to kill the committer: every later write answered UNAVAILABLE
        (
            "Add",
            hash_pb2.AddRequest(collection="pbf\n", id="x", code=code_msg(16, 128)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),  # "$" matched before the newline: a second collection named like "pbf"
        ("Get", hash_pb2.GetRequest(collection="pbf\n", id="x"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            "Add",
            hash_pb2.AddRequest(collection="bad", id="x" * 513, code=code_msg(16, 128)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
async def test_bad_input(
    stub: hash_pb2_grpc.HashServiceStub, call: str, request_: object, status: grpc.StatusCode
) -> None:
    if call == "Add" and getattr(request_, "collection", "") == "radius":
        await stub.Add(hash_pb2.AddRequest(collection="radius", id="seed", code=code_msg(8, 64)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(stub, call)(request_)
    assert err.value.code() == status, err.value.details()
    assert err.value.details()
    # Whatever was refused, writes go on.
    ok = await stub.Add(hash_pb2.AddRequest(collection="after-bad", id="y", code=code_msg(16, 128)))
    assert ok.id == "y"


async def test_limits_metrics_and_health_when_the_store_fails(tmp_path: Path) -> None:
    overrides = {
        "storage": {"data_dir": str(tmp_path)},
        "limits": {"max_collections": 2, "max_items_per_collection": 2},
    }
    async with running_service(DEFINITION, overrides) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = hash_pb2_grpc.HashServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            async def add(collection: str, item: str) -> None:
                await stub.Add(
                    hash_pb2.AddRequest(collection=collection, id=item, code=code_msg(16, 128))
                )

            before = (
                REGISTRY.get_sample_value("visionmesh_hash_rejected_total", {"reason": "limit"})
                or 0
            )
            await add("a", "1")
            await add("a", "2")
            await add("a", "2")  # a replacement is not a new item
            await add("b", "1")
            for collection, item, what in (("a", "3", "max_items"), ("c", "1", "max_collections")):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await add(collection, item)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert what in (err.value.details() or "")
            after = REGISTRY.get_sample_value("visionmesh_hash_rejected_total", {"reason": "limit"})
            assert after == before + 2
            assert REGISTRY.get_sample_value("visionmesh_hash_collections") == 2

            # The store stops taking writes (its database connection is gone): NOT_SERVING.
            servicer = server.registrations[0].servicer
            servicer.store._writer.conn.close()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await add("a", "1")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.1)
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            servicer.store._writer = None  # already closed
