"""Generated text for training the local BPE tokenizer: prompts, answers, driving reasoning.

The tokenizer only needs to see the kind of text the model will read and write (the prompt
format's wording, numbers, the four-part chain of thought); this produces a varied corpus
from the format and a small driving vocabulary, deterministically from a seed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from autovla.data.schema import INSTRUCTIONS, OBJECT_CLASSES
from autovla.model.prompts import PromptFormat, render_user_state, render_waypoints

_SCENES = (
    "a straight urban road",
    "a signalised intersection",
    "a two-lane highway",
    "a curved suburban street",
    "a parking lot",
    "a roundabout",
    "a residential street with parked cars",
    "a wide arterial road at night",
    "a construction zone",
    "a pedestrian crossing",
)
_POSITIONS = (
    "ahead in the ego lane",
    "in the left lane",
    "in the right lane",
    "behind",
    "crossing from the right",
    "crossing from the left",
    "oncoming",
    "on the sidewalk",
)
_BEHAVIOURS = (
    "braking",
    "stopped",
    "moving slowly",
    "cutting in",
    "accelerating",
    "turning",
    "waiting to cross",
    "parked",
    "keeping its speed",
    "changing lanes",
)
_LATERAL = (
    "move forward",
    "turn left",
    "turn right",
    "change lane to left",
    "change lane to right",
)
_LONGITUDINAL = (
    "a constant speed",
    "an acceleration",
    "a quick acceleration",
    "a deceleration",
    "a quick deceleration",
    "a deceleration to zero",
)
_LIGHTS = ("red", "green", "yellow", "no")
_WORDS = (
    "traffic light",
    "lane",
    "vehicle",
    "pedestrian",
    "cyclist",
    "speed limit",
    "distance",
    "meters",
    "seconds",
    "safe",
    "gap",
    "yield",
    "stop line",
    "merge",
)


def reasoning_text(rng: np.random.Generator) -> str:
    """One made-up four-part chain of thought (scene, objects, intent, action)."""
    light = rng.choice(_LIGHTS)
    scene = f"Scene: the ego vehicle drives on {rng.choice(_SCENES)} with a {light} light."
    objs = []
    for _ in range(int(rng.integers(2, 4))):
        kind = str(rng.choice(OBJECT_CLASSES)).replace("_", " ")
        objs.append(
            f"a {kind} {rng.choice(_POSITIONS)} at {rng.uniform(2, 60):.1f} m, "
            f"{rng.choice(_BEHAVIOURS)}"
        )
    critical = "Critical objects: " + "; ".join(objs) + "."
    intent = (
        f"Intent: the ego vehicle should {rng.choice(INSTRUCTIONS)} and keep a safe "
        f"{rng.choice(_WORDS)} of {rng.uniform(1, 40):.1f} m."
    )
    if rng.random() < 0.1:
        action = "Best action: STOP."
    else:
        action = f"Best action: {rng.choice(_LATERAL)} with {rng.choice(_LONGITUDINAL)}."
    return "\n".join((scene, critical, intent, action))


def tokenizer_corpus(fmt: PromptFormat, seed: int = 0, n: int = 3000) -> Iterator[str]:
    """`n` documents mixing the format's fixed text, user turns and answers."""
    rng = np.random.default_rng(seed)
    fixed = [fmt.system_dual, fmt.system_action_only, fmt.user_intro, *fmt.camera_labels.values()]
    for i in range(n):
        parts = [fixed[i % len(fixed)]]
        parts.append(
            render_user_state(
                fmt.user_state,
                speed=float(rng.uniform(0, 30)),
                accel=float(rng.uniform(0, 4)),
                instruction=str(rng.choice(INSTRUCTIONS)),
            )
        )
        if rng.random() < 0.5:
            parts.append(fmt.slow_marker + reasoning_text(rng) + "\n" + fmt.think_close)
        else:
            parts.append(fmt.fast_marker + fmt.think_close)
        body = ""
        if fmt.answer_kind == "waypoints":
            body = render_waypoints(waypoints_text_sample(rng))
        parts.append(fmt.action_open + body + fmt.action_close)
        yield "".join(parts)


def waypoints_text_sample(rng: np.random.Generator) -> np.ndarray:
    """(10, 2) made-up future positions: a speed, an acceleration and a curvature, so the
    numbers cover stopping, cruising, turning both ways and (rarely) reversing."""
    t = 0.5 * np.arange(1, 11)
    v, a = rng.uniform(-1, 25), rng.uniform(-3, 3)
    s = np.maximum.accumulate(np.maximum(v * t + 0.5 * a * t * t, 0.0)) if v >= 0 else v * t
    turn = rng.choice([0.0, rng.uniform(-1.6, 1.6)])  # heading change over the path (rad)
    kappa = turn / max(abs(float(s[-1])), 1.0)
    if kappa == 0.0:
        return np.stack([s, np.zeros_like(s)], -1)
    return np.stack([np.sin(kappa * s) / kappa, (1 - np.cos(kappa * s)) / kappa], -1)
