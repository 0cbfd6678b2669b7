"""Fuzzing the command line with broken inputs (hypothesis).

Mutated codebook files, reference pickles, model directories, recipes, overrides and prompt
formats go to the public entry points (`codebook report`, `codebook import`, `model info`,
`plan`, `train sft --config` up to config validation, the prompt-format loader). Each run
must end in a valid result or in exactly one `error:` line that names the input, exit code 1:
never a traceback, an "internal error", a hang (hypothesis deadline) or a write outside the
output folder. Inputs are bounded in size; the model-directory fuzz runs in a subprocess
under RLIMIT_AS, so a regression that builds a full-size model fails fast instead of
starving the machine.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from autovla.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def fuzz_settings(max_examples: int, deadline_ms: int = 10_000) -> settings:
    # derandomize: the same examples on every run (CI must not flake); no example database
    # (it would write .hypothesis/ into the working folder).
    return settings(
        max_examples=max_examples,
        deadline=deadline_ms,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# --- the contract ----------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def check_run(
    result,
    names: list[str],
    ok: Callable[[], None],
    root: Path,
    before: dict[str, tuple[int, int]],
    out: Path | None = None,
) -> None:
    """Valid result (`ok` checks it) or one named error line; nothing written outside `out`."""
    text = result.output
    assert "Traceback" not in text, text
    assert result.exception is None or isinstance(result.exception, SystemExit), text
    assert result.exit_code in (0, 1), text
    event(f"exit code {result.exit_code}")  # --hypothesis-show-statistics: both outcomes occur
    if result.exit_code == 0:
        ok()
    else:
        lines = [ln for ln in result.stderr.splitlines() if "error:" in ln]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "out of memory" not in lines[0], lines[0]
        assert any(n in lines[0] for n in names), (names, lines[0])
    changed = {k for k, v in snapshot(root).items() if before.get(k) != v}
    if out is not None:
        changed = {k for k in changed if not (root / k).resolve().is_relative_to(out.resolve())}
    assert not changed, f"written outside the output folder: {sorted(changed)}"


# JSON-like values that break assumptions: wrong types, NaN, huge and negative numbers.
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2**31, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["../x", "abc", "[/x]", "tiny"]),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
DELETE = object()


def set_path(obj, dotted: str, value) -> None:
    """Set (or delete) `dotted` in nested dicts, creating sections; type clashes are skipped."""
    *parents, last = dotted.split(".")
    for key in parents:
        if not isinstance(obj, dict):
            return
        obj = obj.setdefault(key, {})
    if isinstance(obj, dict):
        if value is DELETE:
            obj.pop(last, None)
        else:
            obj[last] = value


def flip(data: bytes, edits: list[tuple[float, int]]) -> bytes:
    b = bytearray(data)
    for where, value in edits:
        if b:
            b[min(int(where * len(b)), len(b) - 1)] = value
    return bytes(b)


BYTE_EDITS = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=4)


# --- codebook files: `codebook report` -------------------------------------------------------
@pytest.fixture(scope="module")
def codebook_case(tmp_path_factory):
    from autovla.data.manifest import write_manifest
    from tests.conftest import make_sample
    from tests.model_fixtures import tiny_codebook

    root = tmp_path_factory.mktemp("fuzz-codebook")
    write_manifest(root / "ds", [make_sample(i) for i in range(12)])
    good = root / "good.safetensors"
    tiny_codebook(k=16).save(good)
    return root, good


def _codebook_bytes(good: Path, kind: str, draw) -> bytes:
    data = good.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    if kind == "truncate":
        return data[: int(draw(st.floats(0, 1)) * len(data))]
    if kind == "flip":
        return flip(data, draw(BYTE_EDITS))
    if kind == "garbage":
        return draw(st.binary(max_size=96))
    if kind == "header_length":
        return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + data[8:]
    if kind == "meta":
        meta = json.loads(header["__metadata__"]["autovla_codebook"])
        key = draw(
            st.sampled_from(
                [
                    "length",
                    "width",
                    "segment_seconds",
                    "sub_steps",
                    "version",
                    "format",
                    "size",
                    "tol",
                ]
            )
        )
        set_path(meta, key, draw(JSON_VALUES | st.just(DELETE)))
        header["__metadata__"]["autovla_codebook"] = json.dumps(meta)  # NaN written as NaN
    elif kind == "entry":
        entry = header["contours"]
        key = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        entry[key] = draw(
            JSON_VALUES
            | st.sampled_from(["F16", "I64", "BOOL", "U8", "F64", "X9"])
            | st.lists(st.integers(-2, 70), max_size=5)
        )
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def _codebook_tensor(path: Path, draw) -> None:
    """A well-formed file whose contours have another shape, dtype or values."""
    from safetensors.torch import save_file

    shape = draw(
        st.sampled_from(
            [(16, 6, 4, 2), (1, 6, 4, 2), (0, 6, 4, 2), (16, 5, 4, 2), (16, 6, 4), (3,)]
        )
    )
    dtype = draw(
        st.sampled_from(
            [torch.float32, torch.float16, torch.float64, torch.int32, torch.bool, torch.uint8]
        )
    )
    fill = draw(st.sampled_from([0.0, 1.0, float("nan"), float("inf"), 1e30, -5.0]))
    t = torch.full(shape, fill) if dtype.is_floating_point else torch.zeros(shape)
    meta = {"format": "autovla-codebook", "version": 1, "length": 4.8, "width": 2.0}
    save_file({"contours": t.to(dtype)}, str(path), {"autovla_codebook": json.dumps(meta)})


@fuzz_settings(max_examples=30)
@given(
    kind=st.sampled_from(
        ["truncate", "flip", "garbage", "header_length", "meta", "meta", "entry", "tensor"]
    ),
    data=st.data(),
)
def test_codebook_report_fuzz(codebook_case, tmp_path_factory, kind, data):
    root, good = codebook_case
    case = tmp_path_factory.mktemp("cb")
    file, out = case / "cb[1]/x.safetensors", case / "report"
    file.parent.mkdir()
    if kind == "tensor":
        _codebook_tensor(file, data.draw)
    else:
        file.write_bytes(_codebook_bytes(good, kind, data.draw))
    before = snapshot(case)
    args = ["codebook", "report", str(file), "--data", str(root / "ds"), "--out", str(out)]
    r = runner.invoke(app, args)

    def ok() -> None:
        rep = json.loads((out / "report.json").read_text())
        assert rep["reconstruction"]["count"] == 12

    check_run(r, [str(file)], ok, case, before, out)


# --- reference pickles: `codebook import` ----------------------------------------------------
ARRAYS = st.one_of(
    st.builds(
        lambda shape, dtype: np.zeros(shape, dtype=dtype),
        st.sampled_from([(4, 6, 4, 2), (1, 6, 4, 2), (0, 6, 4, 2), (4, 6, 4), (2, 2)]),
        st.sampled_from(
            [
                "float32",
                "float64",
                "int64",
                "uint8",
                "bool",
                "U3",
                "S2",
                "complex64",
                "float16",
                "<M8[s]",
            ]
        ),
    ),
    st.just(np.full((2, 6, 4, 2), np.nan, np.float32)),
    st.just(np.full((2, 6, 4, 2), 1e39, np.float64)),
    st.just(np.zeros((2, 6, 4, 2), dtype=[("a", "f4")])),
    st.just(np.array(["1.0"] * 96, dtype="U3").reshape(2, 6, 4, 2)),
    JSON_VALUES,
)
PICKLED = st.one_of(
    st.builds(lambda a: {"token_all": {"veh": a}}, ARRAYS),
    st.builds(lambda a: {"token_all": a}, ARRAYS),
    st.builds(lambda a: {"token_all": {"ped": a}}, ARRAYS),
    JSON_VALUES,
)


@fuzz_settings(max_examples=30)
@given(
    obj=PICKLED,
    protocol=st.sampled_from([2, 4, 5]),
    edits=st.none() | BYTE_EDITS,
    cut=st.none() | st.floats(0, 1),
)
def test_codebook_import_fuzz(tmp_path_factory, obj, protocol, edits, cut):
    case = tmp_path_factory.mktemp("ref")
    file, out = case / "agent_vocab.pkl", case / "out" / "cb.safetensors"
    data = pickle.dumps(obj, protocol=protocol)
    if edits is not None:
        data = flip(data, edits)
    if cut is not None:
        data = data[: int(cut * len(data))]
    file.write_bytes(data)
    before = snapshot(case)
    r = runner.invoke(app, ["codebook", "import", str(file), "--out", str(out)])

    def ok() -> None:
        from autovla.tokenizer import Codebook

        assert Codebook.load(out).size >= 1

    check_run(r, [str(file)], ok, case, before, out.parent)


# --- recipes and overrides: `train sft --config` ---------------------------------------------
@pytest.fixture
def stop_before_training(monkeypatch):
    """train_sft replaced: a config that validates ends the command with exit code 0."""
    import autovla.train.sft

    def reached(cfg):
        raise typer.Exit(0)

    monkeypatch.setattr(autovla.train.sft, "train_sft", reached)


RECIPE = (REPO / "configs" / "tiny-sft.yaml").read_text()
KEYS = [
    "model.preset",
    "model.codebook",
    "model.seed",
    "data.datasets",
    "data.datasets.0",
    "optim.lr",
    "optim.betas",
    "train.seed",
    "train.max_steps",
    "sft.batch_size",
    "output.dir",
    "inherit",
    "nope.x",
    "sft.lambda_a",
    "val.every",
]
YAML_PIECES = [*"[]{}:,&*!|>'\"#-?%@` \n\t.=0a", "!!python/object:os.system ", "\xff", "\x00"]


def yaml_text(max_size: int) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(YAML_PIECES), max_size=max_size).map("".join)


OVERRIDE = st.builds(
    lambda k, v: f"{k}={v}",
    st.sampled_from([*KEYS, "", "a..b", ".x"]),
    yaml_text(12) | st.sampled_from(["[1,", "{a: 1", "1e999", "&a [*a]", ""]),
) | yaml_text(10)


@fuzz_settings(max_examples=40)
@given(
    kind=st.sampled_from(["text", "value", "deep", "alias_bomb", "inherit", "plain"]),
    overrides=st.lists(OVERRIDE, max_size=3),
    data=st.data(),
)
def test_train_config_fuzz(tmp_path_factory, stop_before_training, kind, overrides, data):
    case = tmp_path_factory.mktemp("cfg")
    recipe = case / "recipe[x].yaml"
    text = RECIPE
    if kind == "text":
        pos = data.draw(st.integers(0, len(text)))
        text = text[:pos] + data.draw(yaml_text(8)) + text[pos + 1 :]
    elif kind == "value":
        import yaml

        cfg = yaml.safe_load(text)
        set_path(cfg, data.draw(st.sampled_from(KEYS)), data.draw(JSON_VALUES | st.just(DELETE)))
        text = yaml.safe_dump(cfg)
    elif kind == "deep":
        n = data.draw(st.sampled_from([40, 1_000, 100_000]))
        opener = data.draw(st.sampled_from(["[", "{a: ", "- "]))
        text = "model: " + opener * n
    elif kind == "alias_bomb":
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
        text = "\n".join(lines) + "\n"
    elif kind == "inherit":
        (case / "loop.yaml").write_text("inherit: loop.yaml\n")
        parent = data.draw(st.sampled_from(["loop.yaml", "missing.yaml", "[1, 2]", "/"]))
        text = f"inherit: {parent}\n" + text
    recipe.write_text(text)
    before = snapshot(case)
    r = runner.invoke(app, ["train", "sft", "--config", str(recipe), "--", *overrides])
    names = [str(recipe), "override", "loop.yaml", "missing.yaml", str(case)]
    check_run(r, names, lambda: None, case, before)


# --- prompt formats: the loader and the prompt builder ---------------------------------------
TEMPLATE = st.lists(
    st.sampled_from(
        [
            "{speed",
            "{accel",
            "{instruction",
            "}",
            "{",
            "{{",
            "}}",
            ":",
            ".3f",
            ">",
            "100000000",
            "*^12",
            ".__class__",
            "[0]",
            "!r",
            "text ",
            "{0}",
            ",",
            "s",
            "{speed:{accel}}",
            "\n",
            "%",
        ]
    ),
    max_size=8,
).map("".join)


@fuzz_settings(max_examples=60, deadline_ms=2_000)
@given(template=TEMPLATE)
def test_prompt_format_fuzz(tmp_path_factory, template):
    from autovla.model.prompts import (
        MAX_WIDTH,
        PromptFormat,
        PromptFormatError,
        build_messages,
        user_state_text,
    )
    from tests.model_fixtures import sample

    case = tmp_path_factory.mktemp("fmt")
    fmt = PromptFormat.load().model_dump()
    fmt["user_state"] = template
    path = case / "format.yaml"
    import yaml

    path.write_text(yaml.safe_dump(fmt))
    try:
        loaded = PromptFormat.load(path)
    except PromptFormatError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    s = sample(1, None)
    text = user_state_text(s, loaded)
    # no attribute was followed; each placeholder is at most MAX_WIDTH (or a few digits) wide
    assert "<class" not in text
    assert len(text) <= len(template) + template.count("{") * (MAX_WIDTH + 30)
    build_messages(s, loaded)


# --- model directories: `model info` and `plan`, in a subprocess under RLIMIT_AS -------------
MODEL_FILES = [
    "autovla.json",
    "config.json",
    "model.safetensors",
    "codebook.safetensors",
    "prompt_format.yaml",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
    "generation_config.json",
    "chat_template.jinja",
]
JSON_KEYS = {
    "autovla.json": [
        "action_token_start",
        "num_action_tokens",
        "codebook_file",
        "codebook_sha256",
        "format_version",
        "prompt_format",
    ],
    "config.json": [
        "model_type",
        "text_config",
        "vision_config",
        "tie_word_embeddings",
        "text_config.hidden_size",
        "text_config.vocab_size",
        "text_config.num_hidden_layers",
        "text_config.num_attention_heads",
        "text_config.num_key_value_heads",
        "text_config.intermediate_size",
        "text_config.hidden_act",
        "text_config.rope_parameters",
        "text_config.rope_parameters.mrope_section",
        "vision_config.depth",
        "vision_config.hidden_size",
        "vision_config.patch_size",
        "vision_config.spatial_merge_size",
        "vision_config.temporal_patch_size",
        "vision_config.in_channels",
        "vision_config.window_size",
        "vision_config.fullatt_block_indexes",
        "image_token_id",
        "video_token_id",
        "vision_start_token_id",
        "architectures",
        "auto_map",
    ],
    "processor_config.json": [
        "image_processor.patch_size",
        "image_processor.merge_size",
        "video_processor.temporal_patch_size",
        "video_processor.size",
        "video_processor.merge_size",
        "image_processor",
        "processor_class",
    ],
    "generation_config.json": ["max_new_tokens", "eos_token_id", "pad_token_id", "do_sample"],
}
MUTATION = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(MODEL_FILES)),
    st.tuples(st.just("truncate"), st.sampled_from(MODEL_FILES), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.sampled_from(MODEL_FILES), BYTE_EDITS),
    st.tuples(st.just("garbage"), st.sampled_from(MODEL_FILES), st.binary(max_size=64)),
    st.sampled_from(list(JSON_KEYS)).flatmap(
        lambda f: st.tuples(
            st.just("json"),
            st.just(f),
            st.sampled_from(JSON_KEYS[f]),
            JSON_VALUES | st.just(DELETE),
        )
    ),
    st.tuples(st.just("deep"), st.sampled_from(list(JSON_KEYS)), st.sampled_from([50, 100_000])),
    st.tuples(st.just("user_state"), TEMPLATE),
)


def _mutate(d: Path, m: tuple) -> None:
    kind = m[0]
    if kind == "user_state":
        import yaml

        p = d / "prompt_format.yaml"
        try:
            fmt = yaml.safe_load(p.read_text())
        except (OSError, ValueError, yaml.YAMLError):  # deleted or broken by another mutation
            return
        if isinstance(fmt, dict):
            fmt["user_state"] = m[1]
            p.write_text(yaml.safe_dump(fmt))
        return
    p = d / m[1]
    if not p.exists():
        return
    elif kind == "delete":
        p.unlink()
    elif kind == "truncate":
        p.write_bytes(p.read_bytes()[: int(m[2] * p.stat().st_size)])
    elif kind == "flip":
        p.write_bytes(flip(p.read_bytes(), m[2]))
    elif kind == "garbage":
        p.write_bytes(m[2])
    elif kind == "deep":
        p.write_text("[" * m[2] + "]" * m[2])
    elif kind == "json":
        try:
            obj = json.loads(p.read_text())
        except (ValueError, RecursionError):
            return
        set_path(obj, m[2], m[3])
        p.write_text(json.dumps(obj))


def run_model_dir_fuzz(base: str, data: str, work: str, max_examples: int) -> None:
    """The model-directory property; run by test_model_dir_fuzz in a limited subprocess."""
    base_dir, root = Path(base), Path(work)

    @fuzz_settings(max_examples=max_examples)
    @given(
        mutations=st.lists(MUTATION, min_size=1, max_size=2),
        command=st.sampled_from(["info", "info", "plan"]),
    )
    def prop(mutations, command):
        d = root / "m[0]"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(base_dir, d)
        for m in mutations:
            _mutate(d, m)
        before = snapshot(root)
        if command == "info":
            args = ["model", "info", str(d)]
        else:
            args = ["plan", "--model", str(d), "--data", data, "--mode", "fast"]
        r = runner.invoke(app, args)

        def ok() -> None:
            assert ("AutoVLA model" if command == "info" else "mode fast") in r.stdout

        check_run(r, [str(d)], ok, root, before)

    prop()


AS_LIMIT = 8 * 2**30  # address space of the fuzzing process: torch + a tiny model fit easily


@pytest.mark.slow  # ~10 s: a subprocess that imports torch and transformers
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is a Linux limit")
def test_model_dir_fuzz(tmp_path):
    from tests.model_fixtures import dataset, tiny_vla

    base = tmp_path / "base"
    tiny_vla().save_pretrained(base)
    root, _ = dataset()
    work = tmp_path / "work"
    work.mkdir()
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({AS_LIMIT}, {AS_LIMIT}))\n"
        "import torch; torch.set_num_threads(1)\n"
        "from tests.test_fuzz_cli import run_model_dir_fuzz\n"
        f"run_model_dir_fuzz({str(base)!r}, {str(root)!r}, {str(work)!r}, 60)\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("AUTOVLA_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
