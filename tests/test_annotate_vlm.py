"""VLM annotation: parsing and checks, the template, and runs against a scripted server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autovla.annotate.rules import ACTION_PREFIX
from autovla.annotate.vlm import AnnotationError, VLMOptions, annotate_vlm
from autovla.annotate.vlm_parse import check_answer, parse_answer
from autovla.annotate.vlm_prompt import TEMPLATE_DIR, build_messages, load_template
from autovla.data.manifest import load_samples, write_manifest
from tests._openai_standin import StandIn, serve
from tests.conftest import make_sample

GOOD = """Here is my analysis.
**1. Scene:** A straight road, two lanes, daylight.
2) Critical objects: a car 12 m ahead, braking; a cyclist on the right.
Intent: The instruction is to go straight and the car ahead is slowing.
Action: move forward with a constant speed
Complexity: complex"""


def test_parse_accepts_markdown_numbering_and_normalises_to_the_rules_layout() -> None:
    p = parse_answer(GOOD)
    assert set(p.parts) == {"scene", "critical objects", "intent", "action"}
    assert p.parts["scene"] == "A straight road, two lanes, daylight."
    assert p.complexity == "complex"
    v = check_answer(GOOD, "go straight", "move forward with a constant speed", 700, judge=True)
    assert v.ok and v.complexity == "complex"
    lines = v.text.split("\n")
    assert len(lines) == 4
    assert lines[1].startswith("Critical objects: a car 12 m ahead")
    assert lines[3] == f"{ACTION_PREFIX}move forward with a constant speed."


@pytest.mark.parametrize(
    ("answer", "instruction", "action", "reason"),
    [
        (GOOD.replace("Intent:", "Thoughts:"), "go straight", "move forward with a constant "
         "speed", "missing_part"),
        (GOOD, "go straight", "move forward with a deceleration", "wrong_action"),
        (GOOD.replace("go straight and", "turn left and"), "go straight",
         "move forward with a constant speed", "wrong_instruction"),
        (GOOD + " " + "x" * 800, "go straight", "move forward with a constant speed", "too_long"),
    ],
)  # fmt: skip
def test_rejections_name_their_reason(answer, instruction, action, reason) -> None:
    v = check_answer(answer, instruction, action, 700)
    assert not v.ok and v.reason == reason and v.detail


def test_an_answer_without_any_heading_is_missing_every_part() -> None:
    assert parse_answer("<think>fast</think> <action_3>").parts == {}
    v = check_answer("<think>fast</think>", "go straight", "move forward with a stop", 700)
    assert not v.ok and v.reason == "missing_part"


def test_turn_in_the_action_is_not_a_wrong_instruction() -> None:
    ans = GOOD.replace("go straight and", "turn left at the junction and").replace(
        "move forward with a constant speed", "turn left with a deceleration"
    )
    assert check_answer(ans, "unknown", "turn left with a deceleration", 700).ok


def test_template_is_safe_and_validated(tmp_path: Path) -> None:
    tpl = load_template("vlm-v1")
    assert tpl.key == "vlm-v1@v1"
    bad = tmp_path / "t.yaml"
    bad.write_text(
        "name: t\nversion: 1\nsystem: s\nuser: '$speed $__class__'\njudge: j\nrepair: r\n"
    )
    with pytest.raises(ValueError, match="unknown placeholder"):
        load_template(bad)
    bad.write_text("name: t\nversion: 1\nsystem: s\nuser: '{speed:>100000000}'\njudge: j\n"
                   "repair: r\n")  # fmt: skip
    # braces are plain text in string.Template: nothing is formatted
    assert load_template(bad).fill("{speed:>100000000} $speed", {"speed": 3}) == (
        "{speed:>100000000} 3"
    )


def test_messages_hold_three_cameras_as_data_urls_and_the_hint(tmp_path: Path) -> None:
    s = make_sample(0, tmp_path)
    msgs = build_messages(load_template(), s, tmp_path, frames="all", image_size=16)
    parts = msgs[-1]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == 12 and all(u.startswith("data:image/jpeg;base64,") for u in urls)
    text = parts[-1]["text"]
    assert "Instruction: go straight." in text
    assert "Action taken (ground truth): move forward with a constant speed." in text
    one = build_messages(load_template(), s, tmp_path, frames="latest")
    assert sum(p["type"] == "image_url" for p in one[-1]["content"]) == 3


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_images_shrink_to_the_longer_side_and_keep_their_aspect(
    tmp_path: Path, fmt, monkeypatch
) -> None:
    import base64
    import io

    import numpy as np
    from PIL import Image

    from autovla.annotate import vlm_prompt

    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 255, (34, 60, 3), dtype=np.uint8))  # smooth
    big = big.resize((1920, 1080), Image.BICUBIC)
    path = tmp_path / f"cam.{fmt.lower()}"
    big.save(path, format=fmt)

    def decoded(url: str) -> Image.Image:
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))

    small = decoded(vlm_prompt.encode_image(path, 448))
    assert small.format == "JPEG" and small.size == (448, 252)
    # the content survives: the shrunk frame is close to a plain resize of the original
    want = np.asarray(big.resize((448, 252), Image.BOX), dtype=float)
    err = np.abs(np.asarray(small.convert("RGB"), dtype=float) - want).mean()
    assert err < 8 < np.abs(want - want.mean()).mean()  # (about 4-5 grey levels of 50)
    assert decoded(vlm_prompt.encode_image(path, 4000)).size == (1920, 1080)  # never enlarged
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut\.jpg: cannot read the image"):
        vlm_prompt.encode_image(bad, 448)
    with pytest.raises(ValueError, match="not a regular file"):
        vlm_prompt.encode_image(tmp_path, 448)
    monkeypatch.setattr(vlm_prompt, "MAX_IMAGE_FILE_BYTES", 1000)
    with pytest.raises(ValueError, match=r"cam\.\w+: image file larger than"):
        vlm_prompt.encode_image(path, 448)


def _dataset(tmp_path: Path, n: int = 8) -> Path:
    root = tmp_path / "ds"
    samples = [make_sample(i, root).model_copy(update={"complex": True}) for i in range(n)]
    write_manifest(root, samples)
    return root


def _opts(url: str, **kw) -> VLMOptions:
    base = dict(endpoint=url, model="stand-in", concurrency=4, timeout=5.0, max_retries=2,
                backoff=0.01, progress=False)  # fmt: skip
    return VLMOptions(**{**base, **kw})


def test_run_accepts_repairs_retries_and_writes_the_manifest_once(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    script = {"s0000": ["missing", "ok"], "s0001": ["500", "ok"], "s0002": ["429", "ok"],
              "s0003": ["garbage", "ok"], "s0004": ["missing", "missing", "missing"]}  # fmt: skip
    stand = StandIn(script)
    with serve(stand) as url:
        s = annotate_vlm(root, _opts(url))
    assert s.selected == 8 and s.sent == 8
    assert s.accepted == 7 and s.repaired == 1 and dict(s.rejected) == {"missing_part": 1}
    assert s.retries == 3 and s.tokens_in > 0
    by_id = {x.id: x for x in load_samples(root)}
    assert by_id["s0004"].reasoning is None
    for i in (0, 1, 2, 3, 5, 6, 7):
        r = by_id[f"s{i:04d}"].reasoning
        assert r.endswith(f"{ACTION_PREFIX}move forward with a constant speed.")
        assert by_id[f"s{i:04d}"].meta["reasoning_source"] == "vlm:stand-in:vlm-v1@v1"
    assert not list(root.glob(".manifest*"))  # atomic rewrite: no temporary left
    summary = json.loads((root / "annotations/vlm-summary-vlm-v1-v1-1-of-1.json").read_text())
    assert summary["accepted"] == 7


def test_timeouts_are_retried(tmp_path: Path) -> None:
    root = _dataset(tmp_path, 2)
    stand = StandIn({"s0000": ["slow", "ok"]})
    stand.slow_seconds = 1.5
    with serve(stand) as url:
        s = annotate_vlm(root, _opts(url, timeout=0.5))
    assert s.accepted == 2 and s.retries >= 1


def test_dropped_server_then_resume_sends_nothing_twice(tmp_path: Path) -> None:
    root = _dataset(tmp_path, 12)
    stand = StandIn({f"s{i:04d}": ["ok"] for i in range(4)}, default="drop")
    with serve(stand) as url, pytest.raises(AnnotationError, match="in a row got no answer"):
        annotate_vlm(root, _opts(url, concurrency=1, max_retries=0))
    first = set(stand.answered())
    assert first == {f"s{i:04d}" for i in range(4)}
    assert all(s.reasoning is None for s in load_samples(root))  # manifest untouched so far
    again = StandIn()
    with serve(again) as url:
        s = annotate_vlm(root, _opts(url))
    asked = {u for u, _ in again.log}
    assert not asked & first and asked == {f"s{i:04d}" for i in range(4, 12)}
    assert s.cached == 4 and s.accepted == 8
    assert sum(x.reasoning is not None for x in load_samples(root)) == 12


def test_shards_and_limit(tmp_path: Path) -> None:
    root = _dataset(tmp_path, 6)
    stand = StandIn()
    with serve(stand) as url:
        a = annotate_vlm(root, _opts(url, shard=(1, 2)))
        b = annotate_vlm(root, _opts(url, shard=(2, 2), limit=2))
    assert a.sent == 3 and b.sent == 2
    assert sum(x.reasoning is not None for x in load_samples(root)) == 5


def test_bad_endpoint_stops_the_run(tmp_path: Path) -> None:
    root = _dataset(tmp_path, 2)
    with serve(StandIn()) as url, pytest.raises(AnnotationError, match="HTTP 404"):
        annotate_vlm(root, _opts(url.removesuffix("/v1") + "/nope"))


def test_against_autovla_serve_with_the_tiny_model(tmp_path: Path) -> None:
    """Real HTTP to `autovla serve`: the tiny model answers in its own format (a think block
    and action tokens), which fails validation; the rejection is recorded with its reason.
    The template sends no system text or examples (the service accepts only its own prompt),
    all four frames per camera, and the state line the model's prompt format uses."""
    import yaml

    from autovla.serve.app import BackgroundServer
    from tests.model_fixtures import dataset
    from tests.serve_fixtures import make_app

    src_root, samples = dataset()
    root = tmp_path / "ds"
    for s in samples[:2]:
        for rels in s.cameras.values():
            for rel in rels:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes((src_root / rel).read_bytes())
    written = [s.model_copy(update={"complex": True}) for s in samples[:2]]
    write_manifest(root, written)
    tpl = yaml.safe_load((TEMPLATE_DIR / "vlm-v1.yaml").read_text())
    tpl.update(system="", examples=[])
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(tpl))
    with BackgroundServer(make_app(max_batch=2, max_wait_ms=2.0)) as server:
        opts = _opts(server.url + "/v1", model="tiny", template=str(tmp_path / "t.yaml"),
                     frames="all", repair_attempts=0, timeout=60.0, overwrite=True)  # fmt: skip
        s = annotate_vlm(root, opts)
        assert s.sent == 2 and s.accepted == 0 and dict(s.rejected) == {"missing_part": 2}
        assert s.tokens_out >= 0 and s.requests == 2
        # a re-ask carries the rejected answer as an assistant turn: the service refuses it
        s2 = annotate_vlm(root, _opts(server.url + "/v1", model="tiny",
                                      template=str(tmp_path / "t.yaml"), frames="all",
                                      repair_attempts=1, retry_rejected=True, timeout=60.0,
                                      overwrite=True))  # fmt: skip
    assert s2.sent == 2 and dict(s2.rejected) == {"http_400": 2}
    cache = (root / "annotations").glob("vlm-cache-*.jsonl")
    entries = [json.loads(line) for f in cache for line in f.read_text().splitlines()]
    assert any("<think>" in e.get("answer", "") for e in entries)
    assert load_samples(root) == written  # nothing accepted: the manifest is unchanged


def test_hostile_server_answers(tmp_path: Path) -> None:
    """A drip-feeding server is cut at the timeout, an 8 MB answer is refused, a bad `usage`
    is ignored (the answer still counts)."""
    import time

    root = _dataset(tmp_path, 3)
    stand = StandIn({"s0000": ["drip", "ok"], "s0001": ["huge"], "s0002": ["bad_usage"]})
    t0 = time.perf_counter()
    with serve(stand) as url:
        s = annotate_vlm(root, _opts(url, timeout=1.0, max_retries=1))
    assert time.perf_counter() - t0 < 8
    assert s.accepted == 2 and dict(s.rejected) == {"answer_too_large": 1}
    # the drip was retried; only the one good answer's usage counts ("many" and inf are 0)
    assert s.retries == 1 and s.tokens_in == 100


def test_torn_and_corrupt_cache_lines(tmp_path: Path) -> None:
    root = _dataset(tmp_path, 4)
    stand = StandIn()
    with serve(stand) as url:
        annotate_vlm(root, _opts(url, limit=2))
        (cache,) = (root / "annotations").glob("vlm-cache-*.jsonl")
        with open(cache, "a") as f:  # a run killed mid-line
            f.write('{"id": "s0002", "templ')
        s = annotate_vlm(root, _opts(url))  # the torn line is cut, not glued to a new entry
        assert s.sent == 2 and s.accepted == 2  # the first two have reasoning already
        assert sum(x.reasoning is not None for x in load_samples(root)) == 4
        lines = cache.read_text().splitlines()
        lines[0] = json.dumps({**json.loads(lines[0]), "reasoning": 123})
        cache.write_text("\n".join(lines) + "\n")
        with pytest.raises(AnnotationError, match=r":1: unusable cache line: field 'reasoning'"):
            annotate_vlm(root, _opts(url))


def test_template_name_is_a_plain_name(tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("name: x/../../outside\nversion: 1\nsystem: s\nuser: u\njudge: j\nrepair: r\n")
    with pytest.raises(ValueError, match="plain name"):
        load_template(bad)


def test_bad_image_is_one_rejection_and_no_answer_is_an_error(tmp_path: Path) -> None:
    root = _dataset(tmp_path, 2)
    (root / make_sample(1).cameras["front"][-1]).write_bytes(b"not an image")
    with serve(StandIn()) as url:
        s = annotate_vlm(root, _opts(url))
    assert s.accepted == 1 and dict(s.rejected) == {"bad_image": 1}
    from typer.testing import CliRunner

    from autovla.cli import app

    r = CliRunner().invoke(app, ["annotate", "vlm", "--data", str(root), "--endpoint",
                                 "http://[::1", "--model", "m", "--quiet"])  # fmt: skip
    assert r.exit_code == 1 and "not a usable URL" in r.output
    root2 = _dataset(tmp_path / "b", 2)
    with serve(StandIn(default="drop")) as url:
        r = CliRunner().invoke(app, ["annotate", "vlm", "--data", str(root2), "--endpoint", url,
                                     "--model", "m", "--quiet", "--max-retries", "0"])  # fmt: skip
    assert r.exit_code == 1 and "2 samples got no answer" in r.output


def test_heading_parse_is_linear() -> None:
    import time

    t0 = time.perf_counter()
    parse_answer("*" * 50_000 + "\n" + "_" * 50_000)
    assert time.perf_counter() - t0 < 1.0
