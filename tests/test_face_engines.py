"""The face service on the other engine backends gives the same faces as on ONNX Runtime."""

from __future__ import annotations

import grpc
import pytest
import skimage.data

from services.common.protos import rgb_to_image
from services.face.main import DEFINITION
from tests.support import running_service
from visionmesh.v1 import face_pb2, face_pb2_grpc

MODELS = ("retinaface", "age", "gender", "emotion")


async def astronaut_face(engine: dict[str, object]) -> face_pb2.Face:
    overrides = {m: {"engine": engine} for m in MODELS}
    async with (
        running_service(DEFINITION, overrides) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        reply = await face_pb2_grpc.FaceServiceStub(channel).Detect(
            face_pb2.DetectRequest(image=rgb_to_image(skimage.data.astronaut())), timeout=120
        )
    assert len(reply.faces) == 1
    return reply.faces[0]


def assert_same_face(got: face_pb2.Face, want: face_pb2.Face, box_px: float, prob: float) -> None:
    for side in ("x_min", "y_min", "x_max", "y_max"):
        assert abs(getattr(got.box, side) - getattr(want.box, side)) < box_px
    assert (
        got.gender.label == want.gender.label
        and abs(got.gender.confidence - want.gender.confidence) < prob
    )
    assert got.emotion.dominant == want.emotion.dominant
    assert abs(got.age.years - want.age.years) < 1.0


async def test_torch_backend_on_cpu_matches_onnxruntime() -> None:
    pytest.importorskip("onnx2fx", reason="the torch backend converts ONNX with onnx2fx")
    want = await astronaut_face({"backend": "onnxruntime"})
    got = await astronaut_face({"backend": "torch", "device": "cpu"})
    assert_same_face(got, want, box_px=1.0, prob=1e-3)


@pytest.mark.gpu
async def test_torch_backend_on_cuda_matches_onnxruntime() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    want = await astronaut_face({"backend": "onnxruntime"})
    got = await astronaut_face({"backend": "torch", "device": "cuda:0", "precision": "fp16"})
    assert_same_face(got, want, box_px=4.0, prob=0.05)
