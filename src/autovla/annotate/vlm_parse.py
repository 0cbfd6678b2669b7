"""Parse a VLM's annotation answer, check it against the sample, and normalise it.

An answer must hold the four labelled parts of the template (Scene, Critical objects,
Intent, Action). It is rejected, with a reason the re-ask names, when a part is missing or
empty, when the Action part is not the hint's meta-action, when the text names an
instruction other than the sample's (and other than the action's own turn), or when it is
longer than the template allows. An accepted answer is rewritten into the layout of the
rule-based annotations (`annotate.rules`): one line per part, the last one
"Best driving action: <meta-action>." — so the prompt format and the SFT loss see one shape
of reasoning whatever wrote it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autovla.annotate.rules import ACTION_PREFIX

PARTS = ("scene", "critical objects", "intent", "action")
# Markup before a heading ("**1. Scene:**", "> - Intent:"): no two repeated groups can match
# the same characters, so a line of thousands of "*" is rejected in linear time.
_HEADING = re.compile(
    r"^[ \t>*#_-]*(?:\d+[.)][ \t]*[*_]*[ \t]*)?(scene|critical objects|intent|action|complexity)"
    r"[ \t]*[*_]*[ \t]*[:：][ \t]*[*_]*",
    re.IGNORECASE | re.MULTILINE,
)
INSTRUCTION_PHRASES = ("turn left", "turn right", "go straight")


@dataclass(frozen=True)
class Parsed:
    parts: dict[str, str]  # lower-case part name -> text (markdown emphasis stripped)
    complexity: str | None  # "complex" / "straightforward" when the answer judged it


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # short machine-friendly code: "", "missing_part", "wrong_action", ...
    detail: str  # what the re-ask tells the model
    text: str | None = None  # the normalised reasoning when ok
    complexity: str | None = None


def parse_answer(answer: str) -> Parsed:
    """Split an answer at its part headings; text before the first heading is ignored."""
    matches = list(_HEADING.finditer(answer))
    parts: dict[str, str] = {}
    complexity = None
    for m, nxt in zip(matches, [*matches[1:], None], strict=False):
        name = m.group(1).lower()
        body = answer[m.end() : nxt.start() if nxt else len(answer)]
        body = " ".join(body.replace("**", "").replace("__", "").split()).strip(" *_")
        if name == "complexity":
            word = body.lower().split(" ")[0].strip(".") if body else ""
            complexity = word if word in ("complex", "straightforward") else None
        elif name not in parts:  # the first occurrence of a part counts
            parts[name] = body
    return Parsed(parts, complexity)


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z ]", " ", text.lower()).split())


def check_answer(
    answer: str, instruction: str, action: str, max_chars: int, judge: bool = False
) -> Verdict:
    """Accept or reject one answer for a sample with this instruction and hint action."""
    if len(answer) > max_chars:
        return Verdict(False, "too_long", f"the answer has {len(answer)} characters, the limit "
                       f"is {max_chars}")  # fmt: skip
    parsed = parse_answer(answer)
    missing = [p for p in PARTS if not parsed.parts.get(p)]
    if missing:
        names = ", ".join(p.capitalize() for p in missing)
        return Verdict(False, "missing_part", f"the part(s) {names} are missing or empty")
    said = _words(parsed.parts["action"])
    expected = _words(action)
    if expected not in said:
        return Verdict(
            False,
            "wrong_action",
            f"the Action part says {parsed.parts['action']!r}, but the action taken was {action!r}",
        )
    lateral = _words(action.partition(" with ")[0])
    body = _words(" ".join(parsed.parts[p] for p in ("scene", "critical objects", "intent")))
    for phrase in INSTRUCTION_PHRASES:
        if phrase != instruction and phrase not in lateral and re.search(rf"\b{phrase}\b", body):
            return Verdict(
                False,
                "wrong_instruction",
                f"the text says {phrase!r}, but the instruction is {instruction!r}",
            )
    if judge and parsed.complexity is None:
        return Verdict(
            False, "missing_part", 'the line "Complexity: complex|straightforward" is missing'
        )
    text = "\n".join(
        [
            _sentence(parsed.parts["scene"]),
            "Critical objects: " + _sentence(parsed.parts["critical objects"]),
            _sentence(parsed.parts["intent"]),
            f"{ACTION_PREFIX}{action}.",
        ]
    )
    return Verdict(True, "", "", text, parsed.complexity)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."
