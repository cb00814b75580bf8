"""Model versions as TF Serving handles them: the server watches the base
directory, loads a newly pushed version and serves it as latest without a
restart, keeps answering from the old one while the new one loads, addresses
any loaded version under /versions/N, and reports (and does not serve) a
version that fails to load."""

import os
import shutil
import threading
import time

import numpy as np
import pytest

from tests.serving_helpers import b64, call, export_tiny, image


@pytest.fixture(scope="module")
def pushes(tmp_path_factory):
    """Three differently initialised exports, staged outside the base dir."""
    stage = tmp_path_factory.mktemp("stage")
    return [export_tiny(stage / f"m{seed}", seed=seed) for seed in range(3)]


def _push(src, base, version):
    """Copy next to the base dir, then rename in: the watcher sees it whole."""
    tmp = base.parent / f".incoming-{version}"
    shutil.copytree(src, tmp)
    os.rename(tmp, base / str(version))


def _probs(url, version=None):
    path = f"/versions/{version}" if version else ""
    status, body = call(f"{url}/v1/models/fer{path}:predict", {"instances": [b64(image())]})
    return status, (np.asarray(body["predictions"][0]["probabilities"]) if status == 200
                    else body["error"])


def _states(url):
    return {s["version"]: (s["state"], s["status"]["error_message"])
            for s in call(f"{url}/v1/models/fer")[1]["model_version_status"]}


def _wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_new_versions_failed_versions_and_retirement(tmp_path, pushes, monkeypatch):
    from pipeline.serving import make_server, versions

    release = threading.Event()

    class SlowV2(versions.ServedVersion):
        def __init__(self, version, *args, **kwargs):
            if version == "2":
                assert release.wait(60)
            super().__init__(version, *args, **kwargs)

    monkeypatch.setattr(versions, "ServedVersion", SlowV2)
    base = tmp_path / "fer"
    base.mkdir()
    _push(pushes[0], base, 1)
    with make_server(str(base), rest_port=0, grpc_port=-1, poll_s=0.1,
                     keep_versions=2) as srv:
        url = srv.rest_url
        status, v1 = _probs(url)
        assert status == 200 and _states(url) == {"1": ("AVAILABLE", "")}

        # v2 arrives; while it loads, "latest" is still v1.
        _push(pushes[1], base, 2)
        _wait(lambda: _states(url).get("2", ("",))[0] == "LOADING")
        np.testing.assert_allclose(_probs(url)[1], v1, atol=1e-6)
        assert _probs(url, 2)[0] == 404
        release.set()
        _wait(lambda: _states(url).get("2", ("",))[0] == "AVAILABLE")
        status, v2 = _probs(url)
        assert status == 200 and np.abs(v2 - v1).max() > 1e-4
        np.testing.assert_allclose(_probs(url, 1)[1], v1, atol=1e-6)
        np.testing.assert_allclose(_probs(url, 2)[1], v2, atol=1e-6)

        # A broken push is reported, not served; latest stays v2.
        broken = base.parent / ".incoming-3"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        os.rename(broken, base / "3")
        _wait(lambda: _states(url).get("3", ("",))[0] == "END")
        state, error = _states(url)["3"]
        assert error, "the failed load must say why"
        np.testing.assert_allclose(_probs(url)[1], v2, atol=1e-6)
        status, message = _probs(url, 3)
        assert status == 404 and "END" in message

        # Replacing its files retries it; v1 then falls out (two versions kept).
        shutil.rmtree(base / "3")
        _push(pushes[2], base, 3)
        _wait(lambda: _states(url).get("3", ("",))[0] == "AVAILABLE")
        _wait(lambda: _states(url)["1"][0] == "END")
        status, v3 = _probs(url)
        assert status == 200 and np.abs(v3 - v2).max() > 1e-4
        assert _probs(url, 1)[0] == 404
        np.testing.assert_allclose(_probs(url, 2)[1], v2, atol=1e-6)

        # A removed version disappears from the status.
        shutil.rmtree(base / "1")
        _wait(lambda: "1" not in _states(url))
        assert set(_states(url)) == {"2", "3"}


def test_a_version_dir_is_served_alone_and_not_watched(tmp_path, pushes):
    from pipeline.serving import make_server

    base = tmp_path / "fer"
    base.mkdir()
    _push(pushes[0], base, 4)
    with make_server(str(base / "4"), rest_port=0, grpc_port=-1, poll_s=0.1) as srv:
        assert srv.name == "fer" and _states(srv.rest_url) == {"4": ("AVAILABLE", "")}
        _push(pushes[1], base, 5)
        time.sleep(0.5)
        assert _states(srv.rest_url) == {"4": ("AVAILABLE", "")}
        assert _probs(srv.rest_url, 4)[0] == 200
