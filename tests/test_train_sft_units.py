"""SFT building blocks without a model: config, lr schedule, loss, data stream, checkpoints."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from autovla.config import ConfigError, load_config
from autovla.data.manifest import write_manifest
from autovla.train.checkpointing import (
    gather_optimizer_state,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    optimizer_from_flat,
    optimizer_to_flat,
    restore_optimizer,
    restore_rng,
    save_checkpoint,
)
from autovla.train.config import SFTConfig
from autovla.train.data import (
    EmptyDatasetError,
    MixedStream,
    Source,
    count_samples,
    global_stream,
    load_items,
    steps_for_epochs,
)
from autovla.train.loss import action_soft_targets, sft_loss
from autovla.train.schedule import lr_at, lr_factor
from autovla.train.validate import constant_velocity, l2_metrics, slow_shares
from tests.conftest import make_sample

REPO = Path(__file__).resolve().parents[1]


# --- config ------------------------------------------------------------------------------------
def _minimal(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_config_loads_recipes_and_rejects_unknown_keys(tmp_path):
    for name in ("tiny-sft.yaml", "qwen2.5-vl-3b-sft.yaml"):
        cfg = load_config(SFTConfig, REPO / "configs" / name)
        assert cfg.data.datasets
    base = "model: {preset: tiny, codebook: cb.safetensors}\ndata: {datasets: [{path: d}]}\n"
    cfg = load_config(
        SFTConfig, _minimal(tmp_path, base), ["optim.lr=1e-3", "sft.variant=action_only"]
    )
    assert cfg.optim.lr == 1e-3 and cfg.sft.variant == "action_only"
    with pytest.raises(ConfigError, match=r"optim.lrr: unknown key"):
        load_config(SFTConfig, _minimal(tmp_path, base), ["optim.lrr=1e-3"])
    with pytest.raises(ConfigError, match=r"sft.variant"):
        load_config(SFTConfig, _minimal(tmp_path, base), ["sft.variant=both"])
    with pytest.raises(ConfigError, match="datasets is empty"):
        load_config(SFTConfig, _minimal(tmp_path, "model: {path: m}\n"))
    with pytest.raises(ConfigError, match=r"model.path"):
        load_config(SFTConfig, _minimal(tmp_path, "data: {datasets: [{path: d}]}\nmodel: {}\n"))


# --- schedule ----------------------------------------------------------------------------------
def test_lr_schedule_warmup_then_step_decay():
    f = [lr_factor(s, warmup_steps=4, decay_every=3, gamma=0.5) for s in range(12)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4:7] == [1.0, 1.0, 1.0]  # first decay period after warm-up
    assert f[7:10] == [0.5, 0.5, 0.5]
    assert f[10] == 0.25
    assert lr_at(0, 1e-5, 0, 2000, 0.98) == 1e-5  # no warm-up: full lr at once
    assert math.isclose(lr_at(500 + 4000, 2e-5, 500, 2000, 0.98), 2e-5 * 0.98**2)
    with pytest.raises(ValueError):
        lr_factor(-1, 1, 1, 0.5)


# --- loss --------------------------------------------------------------------------------------
def test_weighted_loss_worked_example():
    # Vocabulary 4; ids 2 and 3 are "action tokens". Two samples of length 4.
    # Logits make the right token's probability exactly 1/2 or 1/4 (log-prob -ln2 / -ln4).
    ln2, ln4 = math.log(2), math.log(4)
    logits = torch.zeros(2, 4, 4)
    # sample 0: labels at positions 2 (text token 1) and 3 (action 2); predicted from 1 and 2.
    logits[0, 1] = torch.log(torch.tensor([1 / 6, 1 / 2, 1 / 6, 1 / 6]))  # p(1) = 1/2
    logits[0, 2] = torch.zeros(4)  # uniform: p(2) = 1/4
    # sample 1: label at position 3 only (action 3), predicted from 2 with p = 1/2, argmax right.
    logits[1, 2] = torch.log(torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2]))
    labels = torch.tensor([[-100, -100, 1, 2], [-100, -100, -100, 3]])
    action = torch.tensor([[False, False, False, True], [False, False, False, True]])
    weight = torch.tensor([40.0, 1.0])  # sample 0 has reasoning (lambda_cot = 40)
    out = sft_loss(logits, labels, action, weight, lambda_a=0.5)
    lm0, act0 = (ln2 + ln4) / 2, ln4
    lm1, act1 = ln2, ln2
    expected = (40 * (lm0 + 0.5 * act0) + 1 * (lm1 + 0.5 * act1)) / 2
    assert math.isclose(out.loss.item(), expected, rel_tol=1e-5)
    assert math.isclose(out.lm.item(), (lm0 + lm1) / 2, rel_tol=1e-5)
    # Uniform logits tie, argmax picks id 0 (wrong); sample 1 is right: 1 of 2.
    assert out.action_correct.item() == 1 and out.action_total.item() == 2
    # Gradients flow only from answer positions.
    logits.requires_grad_(True)
    sft_loss(logits, labels, action, weight).loss.backward()
    assert logits.grad[:, 0].abs().sum() == 0 and logits.grad[0, 1].abs().sum() > 0
    with pytest.raises(ValueError, match="shape mismatch"):
        sft_loss(logits, labels[:, :3], action, weight)


def test_first_action_weight_counts_the_first_action_token_more():
    ln2, ln4 = math.log(2), math.log(4)
    # Vocabulary 4, ids 2 and 3 are actions; one sample whose answer is two action tokens.
    logits = torch.zeros(1, 3, 4)
    logits[0, 0] = torch.log(torch.tensor([1 / 6, 1 / 6, 1 / 2, 1 / 6]))  # first: p = 1/2
    # second: uniform, p = 1/4
    labels = torch.tensor([[-100, 2, 3]])
    action = torch.tensor([[False, True, True]])
    weight = torch.ones(1)
    plain = sft_loss(logits, labels, action, weight, lambda_a=1.0)
    assert math.isclose(plain.action.item(), (ln2 + ln4) / 2, rel_tol=1e-5)
    out = sft_loss(logits, labels, action, weight, lambda_a=1.0, first_action_weight=3.0)
    assert math.isclose(out.action.item(), (3 * ln2 + ln4) / 4, rel_tol=1e-5)
    # The language-model term (all answer tokens) is unweighted.
    assert math.isclose(out.lm.item(), plain.lm.item(), rel_tol=1e-6)
    assert math.isclose(out.loss.item(), out.lm.item() + out.action.item(), rel_tol=1e-5)


def test_soft_action_targets():
    from autovla.tokenizer.contours import box_contour

    # three tokens ending 1 m, 1.1 m and 5 m ahead
    ends = box_contour(torch.tensor([[1.0, 0.0, 0.0], [1.1, 0.0, 0.0], [5.0, 0.0, 0.0]]), 4.8, 2.0)
    q = action_soft_targets(ends, sigma=0.2)
    torch.testing.assert_close(q.sum(-1), torch.ones(3))
    assert q[0, 0] > q[0, 1] > q[0, 2] and q[0, 2] < 1e-6  # decays with distance
    with pytest.raises(ValueError, match="sigma"):
        action_soft_targets(ends, 0.0)
    # vocabulary 5, action tokens are ids 2..4; one sample, label action token 0 (id 2)
    labels = torch.tensor([[-100, 2]])
    action = torch.tensor([[False, True]])
    weight = torch.ones(1)

    def loss_for(predicted_id, targets):
        logits = torch.full((1, 2, 5), -10.0)
        logits[0, 0, predicted_id] = 10.0
        return sft_loss(logits, labels, action, weight, 1.0, targets, action_start=2).action

    # one-hot targets are plain cross-entropy
    plain = sft_loss(
        torch.randn(1, 2, 5, generator=torch.Generator().manual_seed(0)), labels, action, weight
    )
    onehot = sft_loss(
        torch.randn(1, 2, 5, generator=torch.Generator().manual_seed(0)),
        labels,
        action,
        weight,
        1.0,
        torch.eye(3),
        action_start=2,
    )
    torch.testing.assert_close(plain.loss, onehot.loss)
    # with soft targets a near miss (token 1, 0.1 m off) costs less than a far one (token 2)
    assert loss_for(3, q) < loss_for(4, q)
    assert math.isclose(loss_for(3, torch.eye(3)), loss_for(4, torch.eye(3)), rel_tol=1e-6)


# --- data --------------------------------------------------------------------------------------
def _dataset(root: Path, n: int, prefix: str, split: str = "train") -> Path:
    samples = [
        make_sample(i).model_copy(update={"id": f"{prefix}{i}", "split": split}) for i in range(n)
    ]
    write_manifest(root, samples)
    return root


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory) -> list[Source]:
    base = tmp_path_factory.mktemp("mix")
    a = _dataset(base / "a", 20, "a")
    b = _dataset(base / "b", 7, "b")
    return [Source(str(a), 3.0), Source(str(b), 1.0)]


def _ids(stream, n=None):
    out = []
    for item in stream:
        out.append(item.sample.id)
        if n is not None and len(out) >= n:
            break
    return out


def test_mixing_weights_and_determinism(two_datasets):
    first = [
        it.sample.id for _, it in zip(range(800), global_stream(two_datasets, 5, 8), strict=False)
    ]
    again = [
        it.sample.id for _, it in zip(range(800), global_stream(two_datasets, 5, 8), strict=False)
    ]
    other = [
        it.sample.id for _, it in zip(range(800), global_stream(two_datasets, 6, 8), strict=False)
    ]
    assert first == again and first != other
    share_a = sum(i.startswith("a") for i in first) / len(first)
    assert abs(share_a - 0.75) < 0.05  # weights 3:1
    # Every sample of the small dataset is seen once per pass: cycles, shuffled per pass.
    b = [i for i in first if i.startswith("b")]
    assert sorted(b[:7]) == sorted(f"b{i}" for i in range(7))
    assert b[:7] != b[7:14]


def test_stream_shards_by_rank_and_worker(two_datasets):
    from torch.utils.data import DataLoader

    full = _ids(MixedStream(two_datasets, 1, batch_size=2, limit=24))
    r0 = _ids(MixedStream(two_datasets, 1, batch_size=2, rank=0, world_size=2, limit=24))
    r1 = _ids(MixedStream(two_datasets, 1, batch_size=2, rank=1, world_size=2, limit=24))
    assert r0 == full[0::2] and r1 == full[1::2]
    # Worker count does not change what a rank sees, or the order.
    for workers in (0, 2):
        ds = MixedStream(two_datasets, 1, batch_size=2, rank=1, world_size=2, limit=24)
        dl = DataLoader(
            ds, batch_size=2, num_workers=workers, collate_fn=lambda b: [x.sample.id for x in b]
        )
        assert [i for batch in dl for i in batch] == r1
    # Resuming skips the consumed global items.
    resumed = _ids(MixedStream(two_datasets, 1, batch_size=2, skip=8, limit=16))
    assert resumed == full[8:24]


def test_empty_and_missing_datasets(tmp_path, two_datasets):
    empty = tmp_path / "empty"
    _dataset(empty, 3, "e", split="val")
    with pytest.raises(EmptyDatasetError, match=r"split 'train'.*no samples"):
        next(iter(global_stream([Source(str(empty))], 0, 4)))
    with pytest.raises(EmptyDatasetError):
        count_samples([Source(str(empty))])
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        MixedStream([Source(str(tmp_path / "nope"))], 0, 1)
    assert count_samples(two_datasets) == 27
    assert steps_for_epochs(2, 27, 4) == 14
    val = [it.sample.id for it in load_items(two_datasets, 6, seed=1)]
    assert len(val) == 6 and val == [it.sample.id for it in load_items(two_datasets, 6, seed=1)]
    assert any(v.startswith("b") for v in val) and val != [f"a{i}" for i in range(6)]
    assert len(load_items(two_datasets, 100)) == 27
    with pytest.raises(EmptyDatasetError, match="validation"):
        load_items([Source(str(empty))], 3)


# --- validation metrics ------------------------------------------------------------------------
def test_l2_metrics_and_slow_share():
    truth = np.zeros((1, 10, 3))
    pred = np.zeros((1, 10, 3))
    pred[0, :, 0] = np.arange(1, 11)  # error k+1 at step k
    m = l2_metrics(pred, truth)
    assert m["l2_1s"] == 1.5 and m["l2_2s"] == 2.5 and m["l2_3s"] == 3.5 and m["l2_avg"] == 2.5
    cv = constant_velocity([make_sample(0)])  # vx = 2
    assert np.allclose(cv[0, :, 0], 2 * 0.5 * np.arange(1, 11)) and np.all(cv[0, :, 1:] == 0)
    # validation's baseline is evaluation's, heading along the velocity (atan2), same L2
    from autovla.data.schema import EgoState
    from autovla.eval.baselines import ConstantVelocity

    slide = make_sample(0).model_copy(update={"ego": EgoState(vx=3.0, vy=1.0)})
    cv = constant_velocity([slide])
    assert np.array_equal(cv[0], ConstantVelocity()([slide], [Path(".")])[0].trajectory)
    assert np.allclose(cv[0, :, 2], np.arctan2(1.0, 3.0))
    s = slow_shares(["slow", "fast", "slow", "fast"], [True, True, False, None])
    assert s == {"slow_share_complex": 0.5, "slow_share_straightforward": 1.0}


# --- checkpoints -------------------------------------------------------------------------------
def test_checkpoint_roundtrip_and_rotation(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    saved = gather_optimizer_state(model, opt, sharded=False)
    assert set(saved["state"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}  # by name
    tensors, plain = optimizer_to_flat(saved)
    back = optimizer_from_flat(tensors, plain)
    assert torch.equal(back["state"]["0.weight"]["exp_avg"], opt.state[model[0].weight]["exp_avg"])
    assert back["param_groups"][0]["betas"] == (0.9, 0.999)  # a tuple again after JSON

    def save_model(d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        (d / "weights.txt").write_text("w")

    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, save_model, saved, {"samples_seen": step * 4}, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    last = latest_checkpoint(tmp_path)
    assert last.name == "step-00000003" and (last / "weights.txt").exists()
    state = load_trainer_state(last)
    assert state["step"] == 3 and state["samples_seen"] == 12
    # A half-written checkpoint (no state.json) is ignored.
    (tmp_path / "step-00000009" / "trainer").mkdir(parents=True)
    assert latest_checkpoint(tmp_path) == last
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.1)
    assert restore_optimizer(last, model, opt2, sharded=False, is_main=True) is True
    for p in model.parameters():
        assert torch.equal(opt2.state[p]["exp_avg"], opt.state[p]["exp_avg"])
    # Torch and numpy RNG restored: the draws after a restore repeat.
    restore_rng(last, state)
    a = (torch.rand(3), np.random.rand())
    torch.manual_seed(123)
    np.random.seed(1)
    restore_rng(last, state)
    assert torch.equal(a[0], torch.rand(3)) and a[1] == np.random.rand()
    # Another model's optimiser: the error names the parameter
    wrong = torch.nn.Sequential(torch.nn.Linear(5, 2), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"does not fit.*0\.weight"):
        restore_optimizer(last, wrong, torch.optim.AdamW(wrong.parameters()), False, True)
    assert Counter(p.name for p in (last / "trainer").iterdir())["optimizer.safetensors"] == 1
    # No optimiser state, or one in the layout before names: False, the moments start afresh
    bare = save_checkpoint(tmp_path / "bare", 1, save_model, None, {})
    assert restore_optimizer(bare, model, opt2, False, True) is False
    (bare / "trainer" / "optimizer.json").write_text('{"state": {"0": {}}, "param_groups": []}')
    assert restore_optimizer(bare, model, opt2, False, True) is False


# --- process helpers ---------------------------------------------------------------------------
def test_wall_clock_budget_and_replica_checksum():
    import time

    from autovla.train.distributed import out_of_time, parameter_checksum

    now = time.perf_counter()
    assert not out_of_time(now - 1e6, None)
    assert not out_of_time(now, 1.0)
    assert out_of_time(now - 61.0, 1.0)
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert parameter_checksum(a) == parameter_checksum(b)
    with torch.no_grad():
        b.bias[0] += 1e-3
    assert parameter_checksum(a) != parameter_checksum(b)
