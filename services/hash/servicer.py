"""HashService: encode images/videos to codes; add, search, delete, get in durable collections.

Unknown things, by design (docs/hash.md): Search in a collection that does not
exist is NOT_FOUND; Get of a missing id (or collection) answers ``found=false``
and Delete ``deleted=false`` -- deleting is idempotent. A collection is created
by its first Add and keeps that code size and method for life.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np

from services.common.config import ConfigError
from services.common.deadline import Deadline
from services.common.errors import InvalidInput, NotFound, Overloaded
from services.common.images import ImageLimits
from services.common.protos import decode_frames
from services.common.rpc import grpc_method, request_deadline
from services.hash import validation
from services.hash.backend import CollectionInfo, open_backend
from services.hash.config import HashConfig
from services.hash.encoder import Encoder
from services.hash.store import REJECTED
from visionmesh.v1 import common_pb2, hash_pb2, hash_pb2_grpc


class HashServicer(hash_pb2_grpc.HashServiceServicer):
    def __init__(self, config: HashConfig) -> None:
        self.config = config
        self.image_limits = ImageLimits.from_config(config.images)
        self.encoder = Encoder(config)
        self.method = config.projection.method
        self.default_bits = validation.bits(config.projection.default_bits, 128)
        for b in (64, 128, 256):
            if not self.encoder.projection.supports(self.method, b):
                raise ConfigError(
                    f"projection {config.projection.model} has no {self.method} matrix for {b} bits"
                )
        # faiss + SQLite here, or Milvus: index.backend (services/hash/backend.py).
        self.store = open_backend(config)

    def watch_health(self, not_serving: Callable[[str], None]) -> None:
        """The server's hook: a store that stops taking writes makes the service NOT_SERVING."""
        self.store.on_failure = not_serving
        if self.store.failure:
            not_serving(self.store.failure)

    def _item_id(self, value: str) -> str:
        return validation.item_id(value, self.config.limits.max_id_bytes)

    async def start(self) -> None:
        await self.encoder.start()
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()
        await self.encoder.close()

    async def _encode(
        self, frames: list[common_pb2.Image], bits: int, deadline: Deadline
    ) -> np.ndarray:
        validation.frame_count(len(frames), self.config.max_frames)
        rgbs = await decode_frames(frames, self.image_limits)
        return self.encoder.code(await self.encoder.features(rgbs, deadline), bits)

    def _message(self, code: np.ndarray, bits: int, method: str | None = None) -> hash_pb2.HashCode:
        return hash_pb2.HashCode(code=code.tobytes(), bits=bits, method=method or self.method)

    @grpc_method
    async def Encode(
        self, request: hash_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> hash_pb2.EncodeResponse:
        bits = validation.bits(request.bits, self.default_bits)
        code = await self._encode(list(request.frames), bits, request_deadline(context))
        return hash_pb2.EncodeResponse(code=self._message(code, bits))

    @grpc_method
    async def Add(
        self, request: hash_pb2.AddRequest, context: grpc.aio.ServicerContext
    ) -> hash_pb2.AddResponse:
        try:
            name = validation.collection_name(request.collection)
            item = self._item_id(request.id)
            existing = await self.store.info(name)
            if request.HasField("code") and request.frames:
                raise InvalidInput("give either code or frames, not both")
            if request.HasField("code"):
                validation.code(request.code)
        except InvalidInput:
            REJECTED.labels("invalid").inc()
            raise
        held = self.store.collection_count()
        if existing is None and held >= self.config.limits.max_collections:
            REJECTED.labels("limit").inc()
            raise Overloaded(
                f"collection limit reached: this service holds {held} "
                "collections (limits.max_collections); add to an existing collection"
            )
        if request.HasField("code"):
            code = validation.code(
                request.code,
                existing.bits if existing else None,
                existing.method if existing else None,
            )
            bits, method = (
                request.code.bits,
                existing.method if existing else (request.code.method or self.method),
            )
        else:
            bits = existing.bits if existing else self.default_bits
            if existing is not None and existing.method != self.method:
                raise InvalidInput(
                    f"collection {name!r} holds {existing.method} codes; this service "
                    f"encodes {self.method}: add codes, not frames"
                )
            code, method = (
                await self._encode(list(request.frames), bits, request_deadline(context)),
                self.method,
            )
        replaced = await self.store.add(name, item, code, bits, method)
        return hash_pb2.AddResponse(
            id=item, code=self._message(code, bits, method), replaced=replaced
        )

    async def _collection(self, name: str) -> CollectionInfo:
        coll = await self.store.info(validation.collection_name(name))
        if coll is None:
            raise NotFound(
                f"collection {name!r} does not exist (a collection is created by its first Add)"
            )
        return coll

    @grpc_method
    async def Search(
        self, request: hash_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> hash_pb2.SearchResponse:
        coll = await self._collection(request.collection)
        if request.HasField("code") and request.frames:
            raise InvalidInput("give either code or frames, not both")
        if request.HasField("code"):
            query = validation.code(request.code, coll.bits, coll.method)
        else:
            if coll.method != self.method:
                raise InvalidInput(
                    f"collection {coll.name!r} holds {coll.method} codes; this service "
                    f"encodes {self.method}: search with a code"
                )
            query = await self._encode(list(request.frames), coll.bits, request_deadline(context))
        if request.HasField("max_distance"):
            if not 0 <= request.max_distance <= coll.bits:
                raise InvalidInput(
                    f"max_distance must be within 0..{coll.bits}, got {request.max_distance}"
                )
            found = await self.store.within(
                coll.name, query, request.max_distance, self.config.index.max_radius_results
            )
        else:
            if request.k < 0 or request.k > self.config.index.max_k:
                raise InvalidInput(
                    f"k must be within 0..{self.config.index.max_k} (0 = "
                    f"{self.config.index.default_k}), got {request.k}"
                )
            k = request.k or self.config.index.default_k
            found = await self.store.nearest(coll.name, query, k)
        matches = [
            hash_pb2.Match(id=item, distance=d, similarity=1.0 - d / coll.bits) for item, d in found
        ]
        return hash_pb2.SearchResponse(
            matches=matches, query_code=self._message(query, coll.bits, coll.method)
        )

    @grpc_method
    async def Delete(
        self, request: hash_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> hash_pb2.DeleteResponse:
        name = validation.collection_name(request.collection)
        deleted = await self.store.delete(name, self._item_id(request.id))
        return hash_pb2.DeleteResponse(deleted=deleted)

    @grpc_method
    async def Get(
        self, request: hash_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> hash_pb2.GetResponse:
        name = validation.collection_name(request.collection)
        code = await self.store.read(name, self._item_id(request.id))
        coll = await self.store.info(name)
        if coll is None or code is None:
            return hash_pb2.GetResponse(found=False)
        return hash_pb2.GetResponse(
            found=True, code=hash_pb2.HashCode(code=code, bits=coll.bits, method=coll.method)
        )
