"""The complexity rule on worked examples, its use by converters, stats and `annotate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autovla.annotate.complexity import complexity_reasons, label_complexity
from autovla.cli import app
from autovla.data.manifest import load_samples, write_manifest
from autovla.data.schema import SceneFacts, SceneObject, round_poses
from autovla.data.stats import dataset_stats
from tests.conftest import make_sample


def _plain(**update):
    """Free road at 10 m/s, straight on, no label: the rule's straightforward case."""
    s = make_sample(0)
    fut = [(5.0 * (k + 1), 0.0, 0.0) for k in range(10)]
    base = dict(complex=None, scene=SceneFacts(), future=fut, meta_action=None,
                ego=s.ego.model_copy(update={"vx": 10.0}), scenario_type=None, meta={})  # fmt: skip
    return s.model_copy(update={**base, **update})


def _obj(kind: str, x: float, y: float, v=(0.0, 0.0)) -> SceneObject:
    return SceneObject(id=f"{kind}{x}", kind=kind, box=(x, y, 0.0, 4.0, 2.0), velocity=v)


def test_free_road_is_straightforward() -> None:
    assert complexity_reasons(_plain()) == []
    # a car far ahead, moving our way, is not a reason
    assert complexity_reasons(_plain(scene=SceneFacts(objects=[_obj("vehicle", 60, 0, (10, 0))])))\
        == []  # fmt: skip


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"scene": SceneFacts(objects=[_obj("pedestrian", 15, 4)])}, "vulnerable_road_user"),
        ({"scene": SceneFacts(objects=[_obj("traffic_cone", 20, 1.0)])}, "object_near_path"),
        ({"scene": SceneFacts(objects=[_obj("vehicle", 25, 6, (0, -3))])}, None),  # off the path
        ({"scene": SceneFacts(objects=[_obj("vehicle", 35, 0.5, (0, -3))])}, "object_near_path"),
        ({"scene": SceneFacts(objects=[_obj("vehicle", 20, 0.3, (9, 0))])}, "close_lead_vehicle"),
        ({"instruction": "turn left"}, "instruction"),
        ({"ego": make_sample(0).ego.model_copy(update={"vx": 10.0, "ax": -2.0})}, "braking"),
    ],
)  # fmt: skip
def test_each_trigger(update, reason) -> None:
    got = complexity_reasons(_plain(**update))
    assert got == ([reason] if reason else [])


def test_motion_triggers_from_the_future() -> None:
    t = np.arange(1, 11) * 0.5
    turn = np.stack([8 * np.sin(t / 5 * 1.4), 8 * (1 - np.cos(t / 5 * 1.4)), t / 5 * 1.4], 1)
    assert "turn" in complexity_reasons(_plain(future=round_poses(turn)))
    lane = np.stack([10 * t, 3.2 * np.clip(t / 3, 0, 1), np.zeros(10)], 1)
    assert complexity_reasons(_plain(future=round_poses(lane))) == ["lane_change"]
    stop = np.stack([10 * t - t**2, np.zeros(10), np.zeros(10)], 1)
    stop[5:, 0] = stop[4, 0]
    assert complexity_reasons(_plain(future=round_poses(stop))) == ["braking"]


def test_waymo_like_sample_without_scene_uses_motion_only() -> None:
    s = _plain(scene=None, instruction="turn right")
    assert complexity_reasons(s) == ["instruction"]


def test_label_keeps_existing_labels_and_records_reasons() -> None:
    sim = _plain(complex=False, instruction="turn left")
    assert label_complexity(sim) is sim
    out = label_complexity(_plain(instruction="turn left"))
    assert out.complex is True and out.meta["complexity_reasons"] == ["instruction"]


def test_cli_labels_and_stats_report_the_mix(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_manifest(root, [_plain(id="a"), _plain(id="b", instruction="turn left"),
                          _plain(id="c", complex=True)])  # fmt: skip
    r = CliRunner().invoke(app, ["annotate", "complexity", str(root)])
    assert r.exit_code == 0, r.output
    labels = {s.id: s.complex for s in load_samples(root)}
    assert labels == {"a": False, "b": True, "c": True}
    st = dataset_stats(root)
    assert st.counts["complexity_by_source"]["synthetic: complex"] == 2
    assert st.counts["complexity_reason"] == {"instruction": 1}
    r = CliRunner().invoke(app, ["annotate", "complexity", str(root), "--relabel"])
    assert {s.id: s.complex for s in load_samples(root)}["c"] is False


def test_converters_label_what_they_write(tmp_path: Path) -> None:
    from autovla.data.sources.runner import Unit, run_conversion

    def convert(unit: Unit):
        yield _plain(id="u0", instruction="turn right")
        yield _plain(id="u1")

    run_conversion([Unit(0, "one", None)], convert, tmp_path / "out", progress=False)
    got = {
        s.id: (s.complex, s.meta.get("complexity_reasons")) for s in load_samples(tmp_path / "out")
    }
    assert got == {"u0": (True, ["instruction"]), "u1": (False, [])}
