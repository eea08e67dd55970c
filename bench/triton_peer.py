"""Our classify and face pipelines as PyTriton callables behind Triton's dynamic batcher
(bench_peers' peer).

Runs in ``.venv-triton`` (``make setup-triton``: PyTriton wants numpy<2), with the
repository root on ``PYTHONPATH``:

    .venv-triton/bin/python -m bench.triton_peer --grpc-port P --http-port P --metrics-port P

``classify`` runs exactly what the classify service runs per image, with the
service's own functions: ``preprocess.to_tensor`` (EfficientNet-Lite0),
``safety.nsfw_input`` and the borderline second look (open_nsfw),
``quality.assess``, softmax, top-k and the taxonomy ranking, on the same
repository ONNX files through the same ``OnnxRuntimeEngine`` (same session
options and intra-op threads). Triton batches requests (max batch, queue delay)
and hands the callable a stacked ``[B, H, W, 3]`` uint8 batch.

``face`` runs the face service's ``FacePipeline`` (its configured detector, alignment, age,
gender, emotion, pose, quality) and its tags on every image of the batch, on
``OnnxRuntimeEngine`` sessions of the same repository models, and answers the
serialised ``DetectResponse`` the service would send.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from typing import Any

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from services.classify import quality as quality_mod
from services.classify import safety as safety_mod
from services.classify.config import ClassifyConfig
from services.classify.preprocess import softmax, to_tensor
from services.classify.taxonomy import load_taxonomy
from services.common.config import EngineConfig
from services.common.engines.onnxruntime_backend import OnnxRuntimeEngine
from services.common.repository import load_entry
from services.face.config import FaceConfig
from services.face.pipeline import DETECTOR_MODELS, FaceModels, FacePipeline
from services.face.tags import face_tags
from visionmesh.v1 import face_pb2

TOP_K = 5
MAX_TAGS = 10


class ClassifyPipeline:
    def __init__(self, threads: int) -> None:
        self.config = ClassifyConfig()
        engine_config = EngineConfig(threads=threads)
        self.lite_entry = load_entry("efficientnet_lite0")
        self.nsfw_entry = load_entry("open_nsfw")
        self.lite = OnnxRuntimeEngine(self.lite_entry, engine_config)
        self.nsfw = OnnxRuntimeEngine(self.nsfw_entry, engine_config)
        self.lite.load()
        self.nsfw.load()
        self.nsfw_input_name = self.nsfw_entry.inputs[0].name
        self.taxonomy = load_taxonomy(None, num_classes=len(self.lite_entry.labels()))

    def _nsfw_scores(self, rows: np.ndarray) -> np.ndarray:
        out = self.nsfw.infer({self.nsfw_input_name: rows})
        return next(iter(out.values()))[:, safety_mod.NSFW_CLASS]

    def _second_look(self, rgb: np.ndarray, score: float) -> float:
        """The service's borderline second look: the worst of the tiles and centre crop."""
        cfg = self.config.safety
        if not (cfg.second_look and cfg.borderline_low <= score < cfg.borderline_high):
            return score
        regions = safety_mod.second_look_regions(rgb.shape[0], rgb.shape[1], cfg)
        crops = np.stack(
            [
                safety_mod.nsfw_input(
                    np.ascontiguousarray(rgb[y0:y1, x0:x1]), self.nsfw_entry.preprocessing
                )
                for x0, y0, x1, y1 in regions
            ]
        )
        return max(score, float(self._nsfw_scores(crops).max()))

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        n = image.shape[0]
        lite_rows = np.concatenate(
            [to_tensor(image[i], self.lite_entry.preprocessing) for i in range(n)]
        )
        nsfw_rows = np.stack(
            [safety_mod.nsfw_input(image[i], self.nsfw_entry.preprocessing) for i in range(n)]
        )
        qualities = [quality_mod.assess(image[i], self.config.quality) for i in range(n)]
        probs = softmax(self.lite.infer({"images": lite_rows})["logits"])
        nsfw = self._nsfw_scores(nsfw_rows)
        top = np.argsort(-probs, axis=1)[:, :TOP_K]
        tag_index = np.full((n, MAX_TAGS), -1, np.int32)
        tag_score = np.zeros((n, MAX_TAGS), np.float32)
        nsfw_score = np.zeros((n, 1), np.float32)
        for i in range(n):
            ranked = self.taxonomy.rank(
                probs[i], self.config.taxonomy.min_score, self.config.taxonomy.max_tags
            )
            for j, scored in enumerate(ranked[:MAX_TAGS]):
                tag_index[i, j] = self.taxonomy.tags.index(scored.tag)
                tag_score[i, j] = scored.score
            nsfw_score[i, 0] = self._second_look(image[i], float(nsfw[i]))
        return {
            "top_index": top.astype(np.int32),
            "top_score": np.take_along_axis(probs, top, axis=1).astype(np.float32),
            "tag_index": tag_index,
            "tag_score": tag_score,
            "nsfw_score": nsfw_score,
            "quality": np.array(
                [[q.brightness, q.contrast, q.sharpness] for q in qualities], np.float32
            ).reshape(n, 3),
        }


class EngineModel:
    """``OnnxRuntimeEngine`` behind the pipeline's ``Model`` interface, called directly (no
    batcher)."""

    def __init__(self, name: str, threads: int) -> None:
        self.entry = load_entry(name)
        self.engine = OnnxRuntimeEngine(self.entry, EngineConfig(threads=threads))
        self.engine.load()

    async def infer(
        self, inputs: dict[str, np.ndarray], deadline: object = None
    ) -> dict[str, np.ndarray]:
        return self.engine.infer(inputs)


class FacePeer:
    def __init__(self, threads: int) -> None:
        self.config = c = FaceConfig()
        # The service's own choice of models: the heads plus the configured detector's.
        sources = {"age": c.age, "gender": c.gender, "emotion": c.emotion}
        sources.update(retinaface=c.retinaface, pnet=c.mtcnn.pnet, rnet=c.mtcnn.rnet)
        sources["onet"] = c.mtcnn.onet
        names = ("age", "gender", "emotion", *DETECTOR_MODELS[c.detector.kind])
        models = FaceModels(**{n: EngineModel(sources[n].name, threads) for n in names})  # type: ignore[arg-type]
        self.pipeline = FacePipeline(models, c)  # type: ignore[arg-type]
        # The pipeline is async; PyTriton calls us from inside its own running loop, so ours
        # runs in a thread of its own.
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def _one(self, rgb: np.ndarray) -> bytes:
        det = self.config.detector
        faces = await self.pipeline.analyse(rgb, det.min_face_size, det.max_faces)
        reply = face_pb2.DetectResponse(faces=faces, tags=face_tags(faces, self.config.tags))
        return reply.SerializeToString()

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        async def all_images() -> list[bytes]:
            return await asyncio.gather(*(self._one(image[i]) for i in range(image.shape[0])))

        replies = asyncio.run_coroutine_threadsafe(all_images(), self.loop).result()
        return {"reply": np.array(replies, dtype=np.object_).reshape(-1, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--delay-us", type=int, default=2000)
    parser.add_argument("--face-max-batch", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # SIGTERM -> SystemExit, so ``with Triton()`` below stops tritonserver on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    classify: Any = batch(ClassifyPipeline(args.threads))
    face: Any = batch(FacePeer(args.threads))
    config = TritonConfig(
        grpc_address="127.0.0.1",
        http_address="127.0.0.1",
        metrics_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="classify",
            infer_func=classify,
            inputs=[Tensor(name="image", dtype=np.uint8, shape=(-1, -1, 3))],
            outputs=[
                Tensor(name="top_index", dtype=np.int32, shape=(TOP_K,)),
                Tensor(name="top_score", dtype=np.float32, shape=(TOP_K,)),
                Tensor(name="tag_index", dtype=np.int32, shape=(MAX_TAGS,)),
                Tensor(name="tag_score", dtype=np.float32, shape=(MAX_TAGS,)),
                Tensor(name="nsfw_score", dtype=np.float32, shape=(1,)),
                Tensor(name="quality", dtype=np.float32, shape=(3,)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us),
            ),
        )
        triton.bind(
            model_name="face",
            infer_func=face,
            inputs=[Tensor(name="image", dtype=np.uint8, shape=(-1, -1, 3))],
            outputs=[Tensor(name="reply", dtype=np.bytes_, shape=(1,))],
            config=ModelConfig(
                max_batch_size=args.face_max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us),
            ),
        )
        print("triton_peer: serving", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
