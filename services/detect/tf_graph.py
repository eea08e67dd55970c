"""Read a TensorFlow frozen graph (GraphDef) without TensorFlow.

``tf_graph.proto`` declares the subset of TensorFlow's wire format a frozen
inference graph uses; it is compiled with grpcio-tools' bundled protoc into a
temporary folder when a model is built, so nothing generated is kept.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PROTO = Path(__file__).with_name("tf_graph.proto")
# TensorFlow DataType enum values this reader understands.
DTYPES = {1: np.float32, 3: np.int32, 9: np.int64}


def _module() -> Any:
    with tempfile.TemporaryDirectory(prefix="tfgraph-") as tmp:
        # grpcio-tools' protoc, run as the build tool it is (the same one `make gen` uses).
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}"]
        done = subprocess.run(
            [*cmd, f"--python_out={tmp}", str(PROTO)], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"protoc failed on {PROTO}: {done.stderr.strip()}")
        path = Path(tmp) / "tf_graph_pb2.py"
        spec = importlib.util.spec_from_file_location("tf_graph_pb2", path)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


class FrozenGraph:
    """Nodes of a frozen graph by name, and their constants as numpy arrays."""

    def __init__(self, path: Path) -> None:
        graph = _module().GraphDef()
        graph.ParseFromString(path.read_bytes())
        self.nodes: dict[str, Any] = {n.name: n for n in graph.node}

    def node(self, name: str) -> Any:
        return self.nodes[name.split(":")[0].lstrip("^")]

    def const(self, name: str) -> np.ndarray:
        """Value of a Const node, following Identity (``.../read``) nodes."""
        node = self.node(name)
        while node.op == "Identity":
            node = self.node(node.input[0])
        if node.op != "Const":
            raise ValueError(f"{name} is a {node.op}, not a constant")
        t = node.attr["value"].tensor
        dtype = DTYPES.get(t.dtype)
        if dtype is None:
            raise ValueError(f"{name}: unsupported TensorFlow dtype {t.dtype}")
        shape = [d.size for d in t.tensor_shape.dim]
        if t.tensor_content:
            return np.frombuffer(t.tensor_content, dtype).reshape(shape).copy()
        values = {np.float32: t.float_val, np.int32: t.int_val, np.int64: t.int64_val}[dtype]
        out = np.asarray(list(values), dtype)
        # A scalar-filled constant stores one value for the whole shape.
        return np.broadcast_to(out, shape).copy() if out.size == 1 and shape else out.reshape(shape)
