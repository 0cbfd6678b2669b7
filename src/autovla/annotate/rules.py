"""Reasoning text from scene facts: a four-part chain of thought without a large VLM.

The paper prompts a 72B VLM with the ground-truth meta-action as a hint (docs/method.md section 6);
here every sentence is built from the sample's structured `scene` facts, its instruction,
the ego speed and the meta-action of its future, so the text can never contradict them.
Wording varies with a generator seeded from (seed, sample id): deterministic and idempotent.

Parts: (1) scene description; (2) two or three critical objects with position and behaviour;
(3) the ego's intent given the instruction; (4) the best driving action (the meta-action).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass

import numpy as np

from autovla.data.manifest import rewrite_manifest
from autovla.data.meta_actions import meta_action
from autovla.data.schema import DrivingSample, SceneFacts, SceneObject

SIDE_BAND = 1.75  # m, |y| below this: in the ego's lane (ahead or behind), half a lane width
NEAR_LIGHT = 60.0  # m, a traffic light further than this does not shape the plan yet
MAX_OBJECTS = 3
MAX_CHARS = 500  # a third object is dropped when the text would be longer
BEHIND_PENALTY = 10.0  # m added to the distance of objects behind when ranking
ACTION_PREFIX = "Best driving action: "  # the last sentence; parsers and tests key on it

KIND_NAMES = {
    "vehicle": "vehicle",
    "pedestrian": "pedestrian",
    "bicycle": "cyclist",
    "traffic_cone": "traffic cone",
    "barrier": "barrier",
    "static": "static obstacle",
    "generic_object": "object",
}
VULNERABLE = ("pedestrian", "bicycle")


@dataclass(frozen=True)
class ObjectView:
    """What the text says about one object: derived once so tests can check the same values."""

    obj: SceneObject
    distance: int  # m, rounded Euclidean distance from the ego centre
    side: str  # "ahead", "behind", "ahead on the left", "on the right", ...
    behaviour: str


def sample_rng(seed: int, sample_id: str) -> random.Random:
    """A generator that depends only on (seed, sample id), stable across Python runs."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def object_side(x: float, y: float) -> str:
    """Where an object is relative to the ego (x forward, y left)."""
    if abs(y) < SIDE_BAND:
        return "ahead" if x >= 0 else "behind"
    lat = "left" if y > 0 else "right"
    if x > SIDE_BAND:
        return f"ahead on the {lat}"
    if x < -SIDE_BAND:
        return f"behind on the {lat}"
    return f"on the {lat}"


def object_behaviour(obj: SceneObject) -> str:
    """The stated behaviour, else one derived from the object's speed."""
    if obj.behaviour:
        return obj.behaviour.replace("_", " ")
    if obj.lane_relation == "crossing":
        return "crossing"
    speed = float(np.hypot(*obj.velocity))
    if speed < 0.3:
        return "stationary" if obj.kind not in ("vehicle", "bicycle", "pedestrian") else "stopped"
    return f"moving at {speed:.1f} m/s"


def critical_objects(scene: SceneFacts, limit: int = MAX_OBJECTS) -> list[ObjectView]:
    """The objects that matter most: in or crossing the ego's path first, then by distance."""

    def priority(o: SceneObject) -> tuple[int, float]:
        x, y = o.box[0], o.box[1]
        d = float(np.hypot(x, y))
        in_path = x > -2.0 and abs(y) < SIDE_BAND
        crossing = (o.lane_relation or "") == "crossing" or (o.behaviour or "") == "cutting_in"
        # objects behind matter less than those ahead at the same distance
        return (0 if in_path or crossing else 1, d + (BEHIND_PENALTY if x < 0 else 0.0))

    views = []
    for o in sorted(scene.objects, key=priority)[:limit]:
        x, y = o.box[0], o.box[1]
        views.append(
            ObjectView(o, round(float(np.hypot(x, y))), object_side(x, y), object_behaviour(o))
        )
    return views


def _lane_ordinal(i: int) -> str:
    return {0: "rightmost", 1: "second from the right", 2: "third from the right"}.get(
        i, f"lane {i + 1} from the right"
    )


def describe_scene(s: DrivingSample, rng: random.Random) -> str:
    f = s.scene or SceneFacts()
    road = (f.road or "road").replace("_", " ")
    if not (road.endswith("road") or road == "intersection"):
        road += " road"
    article = "an" if road[0] in "aeiou" else "a"
    where = rng.choice(["Ego drives on", "We are on", "The ego car is on"])
    text = f"{where} {article} {road}"
    if f.lighting:
        text += " at night" if f.lighting == "night" else f" ({f.lighting})"
    if f.lanes:
        text += f", {f.lanes} lane{'s' if f.lanes > 1 else ''} our way"
        if f.ego_lane is not None and f.lanes > 1:
            text += f" (ego in the {_lane_ordinal(f.ego_lane)})"
    text += f", at {s.ego.speed:.1f} m/s"
    if abs(s.ego.ax) >= 0.5:
        text += " and braking" if s.ego.ax < 0 else " and accelerating"
    if f.speed_limit:
        text += f" (limit {f.speed_limit:.0f} m/s)"
    text += "."
    if f.traffic_light in ("red", "yellow", "green"):
        dist = (
            f" {f.traffic_light_distance:.0f} m ahead"
            if f.traffic_light_distance is not None
            else ""
        )
        text += " " + rng.choice(["The traffic light", "The signal"]) + f"{dist} is "
        text += f"{f.traffic_light}."
    return text


def describe_objects(views: list[ObjectView], rng: random.Random) -> str:
    if not views:
        return rng.choice(["No other road users are close.", "The road around us is clear."])
    parts = []
    for v in views:
        name = KIND_NAMES.get(v.obj.kind, v.obj.kind)
        if rng.random() < 0.5:
            parts.append(f"a {name} {v.distance} m away {v.side}, {v.behaviour}")
        else:
            parts.append(f"a {name} {v.side} at {v.distance} m, {v.behaviour}")
    head = rng.choice(["Critical objects: ", "Key road users: ", "Objects to watch: "])
    return head + "; ".join(parts) + "."


def describe_intent(s: DrivingSample, views: list[ObjectView], action: str) -> str:
    """Why the action fits: only causes that are in the facts are named."""
    f = s.scene or SceneFacts()
    goal = {
        "turn left": "The instruction is to turn left",
        "turn right": "The instruction is to turn right",
        "go straight": "The instruction is to go straight",
    }.get(s.instruction, "There is no route instruction, so ego follows the road")
    reasons = []
    near_light = f.traffic_light_distance is None or f.traffic_light_distance <= NEAR_LIGHT
    if f.traffic_light in ("red", "yellow") and near_light:
        reasons.append(f"the {f.traffic_light} light must be respected")
    elif f.traffic_light == "green" and near_light:
        reasons.append("the green light allows proceeding")
    vulnerable = [v for v in views if v.obj.kind in VULNERABLE and v.obj.box[0] > 0]
    if vulnerable:
        reasons.append(f"the {KIND_NAMES[vulnerable[0].obj.kind]} ahead calls for caution")
    lead = [v for v in views if v.side == "ahead" and v.obj.kind not in VULNERABLE]
    if lead:
        name = KIND_NAMES.get(lead[0].obj.kind, "object")
        reasons.append(f"ego keeps a safe gap to the {name} ahead")
    text = goal
    if reasons:
        text += "; " + ", ".join(reasons[:2])
    return text + ". " + plan_phrase(action)


LATERAL_PHRASES = {
    "move forward": "keeps its lane",
    "turn left": "turns left",
    "turn right": "turns right",
    "change lane to left": "moves one lane to the left",
    "change lane to right": "moves one lane to the right",
}
LONGITUDINAL_PHRASES = {
    "a deceleration to zero": "comes to a stop",
    "a constant speed": "holds its speed",
    "a quick acceleration": "speeds up quickly",
    "an acceleration": "speeds up",
    "a quick deceleration": "slows down sharply",
    "a deceleration": "slows down",
}


def plan_phrase(action: str) -> str:
    """The meta-action in words (the ego's plan over the next 5 s)."""
    if action == "STOP":
        return "So ego stays stopped for now."
    lateral, _, longitudinal = action.partition(" with ")
    lat = LATERAL_PHRASES.get(lateral, lateral)
    lon = LONGITUDINAL_PHRASES.get(longitudinal, longitudinal)
    return f"So ego {lat} and {lon}."


def build_reasoning(s: DrivingSample, seed: int = 0) -> str | None:
    """The four-part chain of thought for one sample, or None without a future/meta-action."""
    action = s.meta_action
    if action is None:
        if s.future is None:
            return None
        action = meta_action(s.future_array(), s.ego.speed)
    views = critical_objects(s.scene or SceneFacts())
    while True:
        rng = sample_rng(seed, s.id)  # fresh per attempt: the same facts give the same words
        text = "\n".join(
            [
                describe_scene(s, rng),
                describe_objects(views, rng),
                describe_intent(s, views, action),
                ACTION_PREFIX + action + ".",
            ]
        )
        if len(text) <= MAX_CHARS or len(views) <= 2:
            return text
        views = views[:-1]  # keep the text short: two critical objects are enough


def annotate_sample(s: DrivingSample, seed: int = 0, all_samples: bool = False) -> DrivingSample:
    """The sample with reasoning (and meta_action) set if it needs reasoning; else unchanged.

    A sample without scene facts (`scene` absent, e.g. Waymo E2E, which has no object
    annotations) is left alone: the text would claim a clear road nobody checked.
    """
    if not (all_samples or s.complex) or s.scene is None:
        return s
    text = build_reasoning(s, seed)
    if text is None:
        return s
    action = s.meta_action or text.rsplit(ACTION_PREFIX, 1)[1].rstrip(".")
    return s.model_copy(update={"reasoning": text, "meta_action": action})


@dataclass
class AnnotateSummary:
    total: int = 0
    annotated: int = 0
    skipped_no_future: int = 0
    skipped_no_scene: int = 0
    changed: int = 0


def annotate_dataset(
    path: str | os.PathLike, seed: int = 0, all_samples: bool = False
) -> AnnotateSummary:
    """Write reasoning into every eligible sample of a dataset's manifests, atomically."""
    summary = AnnotateSummary()

    def update(s: DrivingSample) -> DrivingSample:
        summary.total += 1
        new = annotate_sample(s, seed, all_samples)
        wanted = all_samples or s.complex
        if wanted and s.scene is None:
            summary.skipped_no_scene += 1
        elif new.reasoning is not None and wanted:
            summary.annotated += 1 if new is not s else 0
        elif wanted and s.future is None and s.meta_action is None:
            summary.skipped_no_future += 1
        return new

    summary.changed = rewrite_manifest(path, update)
    return summary
