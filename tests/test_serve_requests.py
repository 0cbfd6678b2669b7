"""POST /v1/plan through FastAPI's TestClient: answers, the published schema, and every limit
(each rejection a JSON error naming the field)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from autovla.model.planner import Planner
from tests.model_fixtures import dataset, tiny_vla
from tests.model_fixtures import one_torch_thread as one_torch_thread  # autouse fixture
from tests.serve_fixtures import REASONING, body, make_app, png_b64, png_header_only


@pytest.fixture(scope="module")
def client():
    with TestClient(make_app()) as c:
        yield c


def post(client, payload, **kw):
    return client.post("/v1/plan", json=payload, **kw)


def assert_error(resp, status: int, param: str | None, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["message"].startswith(f"{param}: ")
    return err


@pytest.mark.parametrize("mode", ["fast", "slow"])
def test_plan_equals_in_process_planner(client, mode):
    root, samples = dataset()
    resp = post(client, body(1, mode=mode))
    assert resp.status_code == 200, resp.text
    out = resp.json()
    (ref,) = Planner(tiny_vla(), max_reasoning_tokens=REASONING).plan([samples[1]], root, mode=mode)
    (plan,) = out["plans"]
    assert out["id"] == samples[1].id and out["batch_size"] == 1
    assert plan["action_ids"] == ref.action_ids and plan["text"] == ref.text
    assert plan["mode"] == mode and (plan["reasoning"] is None) == (mode == "fast")
    np.testing.assert_allclose(plan["trajectory"], ref.trajectory, atol=1e-9)
    assert len(plan["trajectory"]) == 10 and all(len(p) == 3 for p in plan["trajectory"])
    t = out["timings"]
    assert {"images", "queue", "plan", "vision", "prefill", "decode", "total"} <= set(t)
    assert t["total"] >= t["plan"] > 0


def test_num_samples_and_data_urls(client):
    b = body(0, temperature=1.0, seed=3, num_samples=3)
    b["cameras"]["front"] = ["data:image/png;base64," + f for f in b["cameras"]["front"]]
    out = post(client, b).json()
    assert len(out["plans"]) == 3
    assert len({tuple(p["action_ids"]) for p in out["plans"]}) > 1  # sampled, not copies
    again = post(client, b).json()  # the same seed gives the same plans
    assert [p["action_ids"] for p in again["plans"]] == [p["action_ids"] for p in out["plans"]]


def test_schema_is_published(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    req = schemas["PlanRequest"]
    assert {"cameras", "ego", "instruction"} <= set(req["required"])
    assert set(schemas["CameraFrames"]["properties"]) == {"front", "front_left", "front_right"}
    assert schemas["CameraFrames"]["properties"]["front"]["minItems"] == 4
    assert "EgoState" in schemas  # the DrivingSample types, not a second copy
    assert "/v1/chat/completions" in spec["paths"] and "/v1/plan" in spec["paths"]


def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    info = models["data"][0]["autovla"]
    assert info["max_reasoning_tokens"] == REASONING and "{speed" in info["state_line"]
    assert client.get("/healthz").json()["status"] == "ok"


# --- schema rejections -----------------------------------------------------------------------
def test_nan_speed_names_the_field(client):
    raw = json.dumps(body(0)).replace('"vx": 3.0', '"vx": NaN')
    assert "NaN" in raw
    resp = client.post("/v1/plan", content=raw, headers={"content-type": "application/json"})
    assert_error(resp, 400, "ego.vx", "invalid_value")


@pytest.mark.parametrize(
    ("edit", "param", "code"),
    [
        (lambda b: b["cameras"]["front"].pop(), "cameras.front", "invalid_value"),
        (lambda b: b["cameras"]["front_left"].append(b["cameras"]["front"][0]),
         "cameras.front_left", "invalid_value"),
        (lambda b: b["cameras"].pop("front_right"), "cameras.front_right", "invalid_value"),
        (lambda b: b["cameras"].update(back=b["cameras"]["front"]), "cameras.back",
         "unsupported_field"),
        (lambda b: b.update(instruction="fly"), "instruction", "invalid_value"),
        (lambda b: b.update(mode="medium"), "mode", "invalid_value"),
        (lambda b: b.update(temperature=-1), "temperature", "invalid_value"),
        (lambda b: b.update(top_p=0), "top_p", "invalid_value"),
        (lambda b: b.update(id="../x"), "id", "invalid_value"),
        (lambda b: b.update(history=[[0, 0]]), "history[0][2]", "invalid_value"),
        (lambda b: b.update(stop=["x"]), "stop", "unsupported_field"),
        (lambda b: b["ego"].pop("vx"), "ego.vx", "invalid_value"),
    ],
)  # fmt: skip
def test_schema_rejections_name_the_field(client, edit, param, code):
    b = body(0)
    edit(b)
    assert_error(post(client, b), 400, param, code)


def test_bad_json(client):
    resp = client.post("/v1/plan", content=b"{nope", headers={"content-type": "application/json"})
    assert_error(resp, 400, "body", "bad_json")


# --- image rejections ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("not base64 !!", "bad_base64"),
        (base64.b64encode(b"plain text, not an image").decode(), "bad_image"),
        ("http://example.com/a.png", "bad_url"),
        ("data:image/png,abc", "bad_url"),
        (png_b64(32, 32, fmt="GIF"), "bad_image"),  # only JPEG and PNG stills are opened
        (base64.b64encode(base64.b64decode(png_b64(32, 32))[:40]).decode(), "bad_image"),
    ],
)
def test_bad_images_name_the_frame(client, value, code):
    b = body(0)
    b["cameras"]["front_left"][2] = value
    assert_error(post(client, b), 400, "cameras.front_left[2]", code)


def test_animated_still_is_refused(client):
    frames = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    b = body(0)
    b["cameras"]["front"][0] = base64.b64encode(buf.getvalue()).decode()
    assert_error(post(client, b), 400, "cameras.front[0]", "bad_image")


def test_frames_of_one_camera_share_a_size(client):
    b = body(0)
    b["cameras"]["front_right"][3] = png_b64(100, 50)
    assert_error(post(client, b), 400, "cameras.front_right[3]", "frame_size_mismatch")


def test_limits():
    lim = {"max_image_pixels": 224 * 112, "max_image_bytes": 20_000,
           "max_decoded_bytes": 12 * 224 * 112 * 3, "max_images": 12,
           "max_num_samples": 2, "max_body_bytes": 400_000}  # fmt: skip
    with TestClient(make_app(limits=lim)) as c:
        assert post(c, body(0)).status_code == 200  # 12 frames of 224x112 fit exactly
        b = body(0)
        b["cameras"]["front"][1] = png_b64(225, 112)  # one pixel column too many
        err = assert_error(post(c, b), 413, "cameras.front[1]", "image_too_large")
        assert "225x112" in err["message"]
        b = body(0)  # a header claiming 30000 x 30000: refused before any pixel is decoded
        b["cameras"]["front"][0] = png_header_only(30000, 30000)
        assert_error(post(c, b), 413, "cameras.front[0]", "image_too_large")
        b = body(0)
        noise = np.random.default_rng(0).integers(0, 255, (112, 224, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, format="PNG")  # ~75 KB: over max_image_bytes
        b["cameras"]["front_left"][0] = base64.b64encode(buf.getvalue()).decode()
        assert_error(post(c, b), 413, "cameras.front_left[0]", "image_too_large")
        assert_error(post(c, body(0, num_samples=3)), 400, "num_samples", "too_many_samples")
        resp = post(c, body(0, max_reasoning_tokens=REASONING + 1))
        assert_error(resp, 400, "max_reasoning_tokens", "too_many_tokens")
        big = body(0, id="x" * 10)
        big["cameras"]["front"][0] = "A" * 500_000  # declared Content-Length over the limit
        assert_error(post(c, big), 413, "body", "body_too_large")

        def chunks():  # no Content-Length: the limit is enforced while reading
            for _ in range(50):
                yield b" " * 10_000

        resp = c.post("/v1/plan", content=chunks(), headers={"content-type": "application/json"})
        assert_error(resp, 413, "body", "body_too_large")

    lim = {"max_decoded_bytes": 11 * 224 * 112 * 3}  # the 12th frame does not fit
    with TestClient(make_app(limits=lim)) as c:
        assert_error(post(c, body(0)), 413, "cameras.front_right[3]", "decoded_too_large")
    with TestClient(make_app(limits={"max_images": 8})) as c:
        assert_error(post(c, body(0)), 400, "cameras.front_right[0]", "too_many_images")


def test_errors_are_counted_in_metrics(client):
    post(client, {"cameras": {}})
    text = client.get("/metrics").text
    assert 'autovla_requests_total{endpoint="/v1/plan",status="400"}' in text
    assert 'autovla_errors_total{code="invalid_value",endpoint="/v1/plan"}' in text
    assert "autovla_batch_size_bucket" in text and "autovla_queue_depth" in text
    assert 'autovla_request_seconds_bucket{endpoint="/v1/plan"' in text
