"""In-process checks of the service's helpers: settings from the environment, base64 decoding, finding the model."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from app.errors import ApiError
from app.main import decode_base64_image, decode_image
from app.settings import ServiceSettings
from app.state import find_model_dir
from index.errors import IndexStoreError
from tests.app_fixtures import REPO


def test_settings_defaults_and_environment(monkeypatch):
    for name in ("DSCMR_ARTIFACTS", "DSCMR_INDEX_ROOT", "DSCMR_PORT", "DSCMR_ADMIN_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    defaults = ServiceSettings()
    assert str(defaults.index_root) == "artifacts/index" and defaults.port == 8000 and defaults.host == "127.0.0.1"
    assert defaults.admin_api_key is None
    monkeypatch.setenv("DSCMR_ARTIFACTS", "/data")
    monkeypatch.setenv("DSCMR_PORT", "9001")
    monkeypatch.setenv("DSCMR_ADMIN_API_KEY", "s3cr3t-key")
    configured = ServiceSettings()
    assert str(configured.index_root) == "/data/index" and configured.port == 9001
    assert configured.admin_api_key.get_secret_value() == "s3cr3t-key" and "s3cr3t" not in repr(configured)
    monkeypatch.setenv("DSCMR_INDEX_ROOT", "/elsewhere")
    assert str(ServiceSettings().index_root) == "/elsewhere"
    monkeypatch.setenv("DSCMR_PORT", "70000")
    with pytest.raises(ValueError, match="port"):
        ServiceSettings()


def test_base64_images_in_every_accepted_spelling():
    data = bytes(range(256)) * 3
    standard = base64.b64encode(data).decode()
    assert decode_base64_image(standard, 10_000) == data
    assert decode_base64_image("data:image/png;base64," + standard, 10_000) == data
    assert decode_base64_image("\n".join(standard[i : i + 76] for i in range(0, len(standard), 76)), 10_000) == data
    assert decode_base64_image(base64.urlsafe_b64encode(data).decode().rstrip("="), 10_000) == data


def test_uploads_are_decoded_in_draft_mode_like_the_training_images():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1280, 960), (200, 30, 30)).save(buf, "JPEG")
    # 256 is EfficientNet-Lite0's resize size, what model.encoder gives as image_decode_size
    assert decode_image(buf.getvalue(), 10_000_000, 256).size == (640, 480)
    assert decode_image(buf.getvalue(), 10_000_000).size == (1280, 960)


@pytest.mark.parametrize(
    "value, status", [("", 422), ("@@@@", 422), ("data:image/png,xyz", 422), (base64.b64encode(b"x" * 2000).decode(), 413)]
)
def test_base64_refusals(value, status):
    with pytest.raises(ApiError) as caught:
        decode_base64_image(value, 1000)
    assert caught.value.status == status


def test_model_is_found_where_the_manifest_says_or_in_a_moved_artefact_root(tmp_path):
    model = tmp_path / "artifacts" / "models" / "abc123"
    model.mkdir(parents=True)
    (model / "manifest.json").write_text(json.dumps({"format_version": 1}))
    version = tmp_path / "artifacts" / "index" / "versions" / "v1"
    settings = ServiceSettings(artifacts=tmp_path / "artifacts")
    assert find_model_dir({"model": {"path": str(model)}}, version, settings) == model
    # the root was built elsewhere (/build/artifacts) and mounted here: the same name under <artifacts>/models
    assert find_model_dir({"model": {"path": "/build/artifacts/models/abc123"}}, version, settings) == model
    with pytest.raises(IndexStoreError, match="DSCMR_MODEL_DIR"):
        find_model_dir({"model": {"path": "/build/artifacts/models/missing"}}, version, settings)
    with pytest.raises(IndexStoreError, match="DSCMR_MODEL_DIR"):
        find_model_dir({"model": {}}, version, settings)
    override = ServiceSettings(artifacts=tmp_path / "artifacts", model_dir=tmp_path / "mine")
    assert find_model_dir({"model": {"path": str(model)}}, version, override) == tmp_path / "mine"


def test_a_server_fault_is_a_json_500_and_the_connection_survives(tmp_path):
    import threading
    import time

    import faiss
    import httpx
    import torch
    import uvicorn

    from app.main import create_app
    from tests.app_fixtures import free_port

    # thread counts as they are: the lifespan applies them process-wide, and this process runs other tests too
    settings = ServiceSettings(
        index_root=tmp_path / "no-index",
        reload_poll_s=0,
        torch_threads=torch.get_num_threads(),
        search_threads=faiss.omp_get_max_threads(),
    )
    app = create_app(settings)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret internals")

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=10) as client:
            response = client.get("/boom")
            assert response.status_code == 500 and response.json()["error"] == "internal_error"
            assert "secret internals" not in response.text and "Traceback" not in response.text
            # the same keep-alive connection still answers (a re-raised exception would make uvicorn drop it)
            assert client.get("/healthz").json() == {"status": "ok"}
            assert 'dscmr_http_requests_total{endpoint="/boom",method="GET",status="500"} 1.0' in client.get("/metrics").text
            # no index at all: not ready, and (once the first load attempt is over) why, as JSON
            deadline = time.monotonic() + 30
            while "no index" not in (ready := client.get("/readyz")).json()["detail"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ready.status_code == 503 and "no index" in ready.json()["detail"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_the_chinese_segmenter_is_loaded_before_the_service_is_ready(app_artefacts, tmp_path):
    # jieba loads its dictionary on first use: the first Chinese query took about 5 s. The serving state (what /readyz
    # waits for) now carries an encoder that has loaded it. Checked in a fresh process, where nothing loaded it before.
    vocab = json.loads((app_artefacts.model_dir / "vocab.json").read_text())
    # jieba is a test dependency (the cjk extra): a vocabulary without it means a broken install, not a reason to skip
    assert vocab["tokenizer"]["cjk"] == "jieba", (
        "the test model's vocabulary does not segment Chinese with jieba: pip install jieba"
    )
    code = (
        "import json, sys\n"
        "import jieba\n"
        "from app.settings import ServiceSettings\n"
        "from app.state import load_serving_state\n"
        "before = jieba.dt.initialized\n"
        "load_serving_state(ServiceSettings(index_root=sys.argv[1], device='cpu', verify_files=False))\n"
        "print(json.dumps({'before': before, 'after': jieba.dt.initialized}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(app_artefacts.index_root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"before": False, "after": True}


def test_load_segmenter_loads_only_what_the_tokenizer_uses():
    from model.text_tokenize import TokenizerConfig, jieba_available, load_segmenter

    assert load_segmenter(TokenizerConfig(cjk="bigram")) is False
    assert load_segmenter(TokenizerConfig(cjk="jieba")) is jieba_available()
