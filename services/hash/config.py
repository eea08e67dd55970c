"""Settings of the hash service."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import ImageLimitsConfig, ModelConfig, ServerConfig
from visionmesh import features

DEFAULT_PORT = features.by_name("hash").default_port
SUPPORTED_BITS = (64, 128, 256)


@dataclass
class ProjectionConfig:
    # Model-repository entry holding the learned projections (services/hash/export.py).
    model: str = "hash_itq"
    version: int = 1
    # "itq" (learned) or "lsh" (random hyperplanes, the baseline) -- codes of the two never mix.
    method: str = "itq"
    # Bits of a code when a request does not say (64, 128 or 256).
    default_bits: int = 128


# Milvus consistency levels a read may ask for (docs/hash.md, "Milvus").
CONSISTENCY_LEVELS = ("Strong", "Session", "Bounded", "Eventually")
# Milvus binary index types the backend builds (milvus-lite 2.5 has BIN_FLAT only).
MILVUS_INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")


@dataclass
class MilvusConfig:
    # http://host:19530 (a Milvus standalone server or cluster proxy; https:// with TLS), or a
    # file path ending in .db (milvus-lite in this process: needs the milvus-lite package here).
    uri: str = ""
    # "user:password" or an API key; give it through the environment
    # (VISIONMESH_INDEX__MILVUS__TOKEN, from a Secret), not a file.
    token: str = ""
    # Milvus database ("" = the server's default database).
    db_name: str = ""
    # Every VisionMesh collection is one Milvus collection named <prefix><name>_<hash>.
    collection_prefix: str = "visionmesh_"
    # What reads wait for. Session: this service's acknowledged writes are visible to its own
    # reads (as with faiss) and other writers' after Milvus's time tick; Bounded: up to a few
    # seconds stale, never waits; Strong: every write anywhere, ~200 ms per read.
    consistency_level: str = "Session"
    # BIN_FLAT (exact) or BIN_IVF_FLAT (cells: index.nlist, 0 = 1024; visited: index.nprobe).
    index_type: str = "BIN_FLAT"
    # Most seconds one Milvus call may take before the request answers UNAVAILABLE.
    timeout_s: float = 10.0
    # How long the start waits for Milvus to answer (a server still recovering after a crash).
    connect_timeout_s: float = 120.0


@dataclass
class IndexConfig:
    # Where collections live: "faiss" (in memory, SQLite on local disk: storage.*) or "milvus"
    # (a Milvus server, cluster or milvus-lite file: index.milvus.*).
    backend: str = "faiss"
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    # Collections switch from exact IndexBinaryFlat to IndexBinaryIVF past this many items.
    ivf_threshold: int = 200_000
    # IVF cells (0 = about 1 per 1000 items at the switch, a power of two, at least 256).
    nlist: int = 0
    # Cells visited per query (recall@10 and latency at 1M codes: docs/benchmarks.md,
    # "Hash service: scale", measured with these settings).
    nprobe: int = 64
    # Results when SearchRequest.k is 0, and the most a request may ask for.
    default_k: int = 10
    max_k: int = 1000
    # Most matches a radius search returns (nearest first).
    max_radius_results: int = 10_000


@dataclass
class StorageConfig:
    # The SQLite database (hash.sqlite3 and its -wal file) lives here.
    data_dir: str = "var/hash"
    # False sets synchronous=OFF: only for benchmarks of the in-memory path, never in production.
    fsync: bool = True
    # Most operations one group commit (one SQLite transaction, one fsync) carries.
    max_batch: int = 4096


@dataclass
class LimitsConfig:
    # Collections one service holds; the next new name answers RESOURCE_EXHAUSTED.
    max_collections: int = 1000
    # Items one collection holds; an Add of a new id past it answers RESOURCE_EXHAUSTED.
    max_items_per_collection: int = 20_000_000
    # Longest external id, in UTF-8 bytes (INVALID_ARGUMENT past it).
    max_id_bytes: int = 512


@dataclass
class ExactTierConfig:
    # PDQ codes of single images kept beside the deep codes; a search with an image (or with the
    # exact_code Encode gave) answers the PDQ matches first (docs/hash.md, "Exact-copy tier").
    enabled: bool = True
    # Largest PDQ distance (of 256 bits) that counts as the same picture: 31 is the operating
    # point PDQ's authors give; no pair of ~915,000 unrelated real pictures came closer than 56.
    max_distance: int = 31
    # PDQ's own quality score (0-100) below which an image is too flat for a pixel hash to tell
    # pictures apart; such images get no exact-tier code. PDQ's authors use 50 for matching
    # against shared databases; here a smooth grey photo (scikit-image's clock, 17-34) matched
    # its copies exactly and nothing unrelated came near, while a flat colour scores 0.
    min_quality: int = 15
    # Images are reduced to this long side before hashing (PDQ reduces to 64 x 64 anyway; the
    # full-size cost grows with the pixels: 6 ms at 512 px, 390 ms at 2048 px).
    max_side: int = 512


@dataclass
class HashConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    # What one request may make this service decode (see services/common/images.py).
    images: ImageLimitsConfig = field(default_factory=ImageLimitsConfig)
    # Batching policy: the model's own (its repository config.yaml).
    features: ModelConfig = field(default_factory=lambda: ModelConfig(name="efficientnet_lite0"))
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    exact_tier: ExactTierConfig = field(default_factory=ExactTierConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # Most frames one item (a video) may carry.
    max_frames: int = 32
