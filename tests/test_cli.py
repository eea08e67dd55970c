"""The `visionmesh analyze` command against a real gateway and classify service."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.main import DEFINITION as GATEWAY
from services.classify.main import DEFINITION as CLASSIFY
from services.common.net import free_port
from tests.support import running_service
from visionmesh import features

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
async def gateway_address() -> AsyncIterator[str]:
    async with running_service(CLASSIFY) as classify:
        dead = f"127.0.0.1:{free_port()}"
        services = {spec.name: [dead] for spec in features.all_features()}
        services["classify"] = [classify.address]
        async with running_service(GATEWAY, {"services": services, "retry_attempts": 1}) as gateway:
            yield gateway.address


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "visionmesh.cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_analyze_json_has_tags_features_and_errors(
    gateway_address: str, chelsea_jpeg: bytes, tmp_path: Path
) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(chelsea_jpeg)
    code, out, err = await cli(
        "analyze", str(photo), "--gateway", gateway_address, "--json", "--features", "classify,ocr"
    )
    assert code == 0, err
    result = json.loads(out)
    content = [tag for tag in result["tags"] if tag["source"] == "classify"]
    assert content[0]["name"] == "animal/cat" and content[0]["display_name_zh"] == "猫"
    assert all({"name", "score", "source"} <= set(tag) for tag in result["tags"])
    assert result["classify"]["labels"][0]["name"] in {
        "tiger cat",
        "Egyptian cat",
        "tabby, tabby cat",
    }
    assert [(e["feature"], e["code"]) for e in result["errors"]] == [("ocr", "UNAVAILABLE")]


async def test_analyze_text_output_and_failures(
    gateway_address: str, chelsea_jpeg: bytes, tmp_path: Path
) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(chelsea_jpeg)
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    code, out, err = await cli(
        "analyze",
        str(photo),
        str(junk),
        str(tmp_path / "missing.jpg"),
        "--gateway",
        gateway_address,
        "--features",
        "classify",
    )
    assert code == 1
    assert "animal/cat" in out and "(猫)" in out
    assert "INVALID_ARGUMENT" in err and "not a recognised image" in err
    assert "no such file" in err
    code, _, err = await cli("analyze", str(photo), "--features", "colour")
    assert code == 2 and "unknown feature" in err
