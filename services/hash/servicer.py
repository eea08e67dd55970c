"""HashService: encode images/videos to codes; add, search, delete, get in durable collections.

Unknown things, by design (docs/hash.md): Search in a collection that does not
exist is NOT_FOUND; Get of a missing id (or collection) answers ``found=false``
and Delete ``deleted=false`` -- deleting is idempotent. A collection is created
by its first Add and keeps that code size and method for life.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

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
from services.hash.exact import ExactTier, fuse
from services.hash.projection import hamming
from services.hash.store import REJECTED
from visionmesh.v1 import common_pb2, hash_pb2, hash_pb2_grpc


@dataclass(frozen=True)
class Codes:
    """An item's codes: the collection's deep code, and its exact-tier (PDQ) code if it has one."""

    code: np.ndarray
    exact: np.ndarray | None = None


def check_exact_tier(config: HashConfig) -> None:
    tier = config.exact_tier
    if not 0 <= tier.max_distance <= validation.EXACT_BITS:
        raise ConfigError(
            f"exact_tier.max_distance must be within 0..{validation.EXACT_BITS}, "
            f"got {tier.max_distance}"
        )
    if not 0 <= tier.min_quality <= 100:
        raise ConfigError(f"exact_tier.min_quality must be within 0..100, got {tier.min_quality}")
    if tier.max_side < 64:
        raise ConfigError(f"exact_tier.max_side must be at least 64, got {tier.max_side}")


def _distance(query: np.ndarray, code: bytes) -> int:
    return int(hamming(query, np.frombuffer(code, np.uint8).reshape(1, -1))[0])


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
        check_exact_tier(config)
        self.exact = ExactTier(config.exact_tier)
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

    async def _encode(self, frames: list[common_pb2.Image], bits: int, deadline: Deadline) -> Codes:
        validation.frame_count(len(frames), self.config.max_frames)
        rgbs = await decode_frames(frames, self.image_limits)
        # PDQ runs while the features model computes.
        features, exact = await asyncio.gather(
            self.encoder.features(rgbs, deadline), self.exact.code(rgbs)
        )
        return Codes(self.encoder.code(features, bits), exact)

    def _message(self, code: np.ndarray, bits: int, method: str | None = None) -> hash_pb2.HashCode:
        return hash_pb2.HashCode(code=code.tobytes(), bits=bits, method=method or self.method)

    @staticmethod
    def _exact_message(code: np.ndarray | bytes | None) -> hash_pb2.HashCode | None:
        if code is None:
            return None
        raw = code if isinstance(code, bytes) else code.tobytes()
        return hash_pb2.HashCode(
            code=raw, bits=validation.EXACT_BITS, method=validation.EXACT_METHOD
        )

    def _given(self, request: hash_pb2.AddRequest | hash_pb2.SearchRequest) -> np.ndarray | None:
        """The exact-tier code a request gave beside its code (None when absent)."""
        if not request.HasField("exact_code"):
            return None
        if not request.HasField("code"):
            raise InvalidInput("exact_code goes with code (give both, or frames)")
        return validation.exact_code(request.exact_code)

    @grpc_method
    async def Encode(
        self, request: hash_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> hash_pb2.EncodeResponse:
        bits = validation.bits(request.bits, self.default_bits)
        codes = await self._encode(list(request.frames), bits, request_deadline(context))
        return hash_pb2.EncodeResponse(
            code=self._message(codes.code, bits), exact_code=self._exact_message(codes.exact)
        )

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
            given_exact = self._given(request)
        except InvalidInput:
            REJECTED.labels("invalid").inc()
            raise
        if existing is None:
            held = self.store.collection_count()
            if held >= self.config.limits.max_collections:
                REJECTED.labels("limit").inc()
                raise Overloaded(
                    f"collection limit reached: this service holds {held} "
                    "collections (limits.max_collections); add to an existing collection"
                )
        if request.HasField("code"):
            codes = Codes(
                validation.code(
                    request.code,
                    existing.bits if existing else None,
                    existing.method if existing else None,
                ),
                given_exact if self.exact.config.enabled else None,
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
            codes = await self._encode(list(request.frames), bits, request_deadline(context))
            method = self.method
        replaced = await self.store.add(name, item, codes.code, bits, method)
        await self._keep_exact(name, item, codes.exact, replaced)
        return hash_pb2.AddResponse(
            id=item,
            code=self._message(codes.code, bits, method),
            replaced=replaced,
            exact_code=self._exact_message(codes.exact),
        )

    async def _keep_exact(
        self, name: str, item: str, exact: np.ndarray | None, replaced: bool
    ) -> None:
        """Write the item's exact-tier code after its deep code (so the tier never names an item
        the collection lacks), or drop the replaced item's old one."""
        tier = validation.tier_collection(name)
        if exact is not None:
            await self.store.add(tier, item, exact, validation.EXACT_BITS, validation.EXACT_METHOD)
        elif replaced:
            await self.store.delete(tier, item)

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
            query = Codes(
                validation.code(request.code, coll.bits, coll.method), self._given(request)
            )
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
            limit = self.config.index.max_radius_results
            found = await self.store.within(coll.name, query.code, request.max_distance, limit)
        else:
            if request.k < 0 or request.k > self.config.index.max_k:
                raise InvalidInput(
                    f"k must be within 0..{self.config.index.max_k} (0 = "
                    f"{self.config.index.default_k}), got {request.k}"
                )
            limit = request.k or self.config.index.default_k
            found = await self.store.nearest(coll.name, query.code, limit)
        exact = await self._exact_matches(coll.name, query, found, limit)
        matches = [
            hash_pb2.Match(
                id=item, distance=d, similarity=1.0 - d / coll.bits, exact_distance=exact_d
            )
            for item, d, exact_d in fuse(exact, found, limit)
        ]
        return hash_pb2.SearchResponse(
            matches=matches,
            query_code=self._message(query.code, coll.bits, coll.method),
            query_exact_code=self._exact_message(query.exact),
        )

    async def _exact_matches(
        self, name: str, query: Codes, deep: list[tuple[str, int]], limit: int
    ) -> list[tuple[str, int, int]]:
        """(id, deep distance, PDQ distance) of the exact-tier items within ``max_distance``,
        nearest PDQ first."""
        tier = self.exact.config
        if query.exact is None or not tier.enabled:
            return []
        tier_name = validation.tier_collection(name)
        pdq = dict(await self.store.within(tier_name, query.exact, tier.max_distance, limit))
        known = dict(deep)
        missing = [item for item in pdq if item not in known]
        for item, code in (await self.store.read_many(name, missing)).items():
            known[item] = _distance(query.code, code)
        # An item deleted meanwhile has no deep code left: it is left out.
        found = [(item, known[item], d) for item, d in pdq.items() if item in known]
        return sorted(found, key=lambda match: match[2])

    @grpc_method
    async def Delete(
        self, request: hash_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> hash_pb2.DeleteResponse:
        name = validation.collection_name(request.collection)
        item = self._item_id(request.id)
        # The exact tier first: it never names an item its collection no longer holds.
        await self.store.delete(validation.tier_collection(name), item)
        deleted = await self.store.delete(name, item)
        return hash_pb2.DeleteResponse(deleted=deleted)

    @grpc_method
    async def Get(
        self, request: hash_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> hash_pb2.GetResponse:
        name = validation.collection_name(request.collection)
        item = self._item_id(request.id)
        code = await self.store.read(name, item)
        coll = await self.store.info(name)
        if coll is None or code is None:
            return hash_pb2.GetResponse(found=False)
        exact = await self.store.read(validation.tier_collection(name), item)
        return hash_pb2.GetResponse(
            found=True,
            code=hash_pb2.HashCode(code=code, bits=coll.bits, method=coll.method),
            exact_code=self._exact_message(exact),
        )
