"""POST /v1/chat/completions called by the `openai` package over real loopback HTTP."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
from PIL import Image

from autovla.data.schema import STANDARD_CAMERAS
from autovla.model.planner import Planner
from autovla.model.prompts import user_state_text
from autovla.serve.app import BackgroundServer
from tests.model_fixtures import dataset, tiny_vla
from tests.model_fixtures import one_torch_thread as one_torch_thread  # autouse fixture
from tests.serve_fixtures import REASONING, make_app

KEY = "chat-key"


@pytest.fixture(scope="module")
def server():
    with BackgroundServer(make_app(api_key=KEY, max_batch=4, max_wait_ms=2.0)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key=KEY, base_url=server.url + "/v1", max_retries=0, timeout=60)


def data_url(path, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def apng_url(paths) -> str:
    frames = [Image.open(p).convert("RGB") for p in paths]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def user_content(i: int, kind: str = "image_url") -> list[dict]:
    root, samples = dataset()
    s = samples[i]
    text = {"type": "text", "text": user_state_text(s, tiny_vla().fmt)}
    parts: list[dict] = [{"type": "text", "text": "Camera videos of the last 1.5 seconds:"}]
    for cam in STANDARD_CAMERAS:
        paths = [root / rel for rel in s.cameras[cam]]
        if kind == "image_url":
            parts += [{"type": "image_url", "image_url": {"url": data_url(p)}} for p in paths]
        elif kind == "video_url":
            parts.append({"type": "video_url", "video_url": {"url": apng_url(paths)}})
        else:
            parts.append({"type": "video", "video": [data_url(p) for p in paths]})
    return [*parts, text]


def chat(client, i=0, kind="image_url", system=None, **kw):
    messages = [{"role": "user", "content": user_content(i, kind)}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return client.chat.completions.create(model="tiny", messages=messages, **kw)


@pytest.mark.parametrize("kind", ["image_url", "video_url", "video"])
def test_answer_is_the_models_own_answer(client, kind):
    root, samples = dataset()
    (ref,) = Planner(tiny_vla(), max_reasoning_tokens=REASONING).plan([samples[2]], root)
    out = chat(client, 2, kind)
    assert out.object == "chat.completion" and out.model == "tiny"
    (choice,) = out.choices
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.content == ref.text  # think block + action tokens, verbatim
    extra = choice.model_extra["autovla"]
    assert extra["action_ids"] == ref.action_ids and extra["mode"] == ref.mode
    np.testing.assert_allclose(extra["trajectory"], ref.trajectory, atol=1e-9)


def test_system_prompt_max_tokens_n_seed(client):
    fmt = tiny_vla().fmt
    root, samples = dataset()
    out = chat(client, 0, system=fmt.system_action_only, max_tokens=11 + 5)
    planner = Planner(tiny_vla(), system="action_only", max_reasoning_tokens=5)
    (ref,) = planner.plan([samples[0]], root)
    assert out.choices[0].message.content == ref.text
    a = chat(client, 1, n=3, temperature=1.0, seed=11)
    b = chat(client, 1, n=3, temperature=1.0, seed=11)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in b.choices]  # seeded: reproducible
    assert len(set(texts)) > 1  # and sampled


def test_models_list(client):
    assert [m.id for m in client.models.list()] == ["tiny"]


def _rejected(fn, kind=openai.BadRequestError):
    with pytest.raises(kind) as e:
        fn()
    return e.value


def test_rejections_name_the_field(client):
    e = _rejected(lambda: chat(client, stop=["x"]))
    assert e.param == "stop" and e.code == "unsupported_field"
    e = _rejected(lambda: chat(client, stream=True))
    assert e.param == "stream"
    e = _rejected(lambda: chat(client, tools=[{"type": "function", "function": {"name": "f"}}]))
    assert e.param == "tools"
    audio = [
        *user_content(0),
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
    ]
    e = _rejected(lambda: client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": audio}]))  # fmt: skip
    assert e.param == f"messages[0].content[{len(audio) - 1}].type" and "input_audio" in e.message
    e = _rejected(lambda: chat(client, max_tokens=5))
    assert e.param == "max_tokens" and e.code == "max_tokens_too_small"
    e = _rejected(lambda: chat(client, system="You are a helpful assistant."))
    assert e.param == "messages[0].content" and e.code == "unsupported_system_prompt"
    e = _rejected(
        lambda: client.chat.completions.create(model="gpt-4o", messages=[
            {"role": "user", "content": user_content(0)}]),
        openai.NotFoundError,
    )  # fmt: skip
    assert e.param == "model"
    content = user_content(0)
    e = _rejected(lambda: client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content[:-1]}]))  # fmt: skip
    assert e.param == "messages[0].content" and e.code == "missing_state"
    e = _rejected(lambda: client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content[2:]}]))  # fmt: skip
    assert e.code == "wrong_image_count"
    turns = [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"},
             {"role": "user", "content": content}]  # fmt: skip
    e = _rejected(lambda: client.chat.completions.create(model="tiny", messages=turns))
    assert e.code == "unsupported_conversation"
    bad = user_content(0)
    bad[3]["image_url"]["url"] = "data:image/png;base64,@@@"
    e = _rejected(lambda: client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": bad}]))  # fmt: skip
    assert e.param == "messages[0].content[3].image_url.url" and e.code == "bad_base64"
    video = user_content(0, "video_url")
    video[1]["video_url"]["url"] = apng_url([dataset()[0] / r for r in
                                             dataset()[1][0].cameras["front"][:3]])  # fmt: skip
    e = _rejected(lambda: client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": video}]))  # fmt: skip
    assert e.param == "messages[0].content[1].video_url.url" and e.code == "wrong_frame_count"


def test_wrong_key_is_refused(server):
    bad = openai.OpenAI(api_key="nope", base_url=server.url + "/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
