"""Caption templates: several paraphrases per (digit, motion) so MIL-NCE has candidates to choose from."""

from __future__ import annotations

import re

import numpy as np

from harmonia.data.spec import DIGIT_WORDS, MOTIONS

# "{w}" is the digit as a word, "{n}" as a numeral.
SUBJECTS: tuple[str, ...] = (
    "a handwritten {w}",
    "the number {n}",
    "the digit {w}",
    "a white {w}",
    "a hand-drawn {n}",
    "{n}",
    "the numeral {n}",
    "a scribbled {w}",
)
MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("drifts to the left", "moves left", "slides leftwards", "travels from right to left"),
    "right": (
        "drifts to the right",
        "moves right",
        "slides rightwards",
        "travels from left to right",
    ),
    "up": ("rises", "moves up", "floats upwards", "climbs towards the top"),
    "down": ("falls", "moves down", "sinks downwards", "drops towards the bottom"),
    "zoom-in": ("grows larger", "zooms in", "comes closer", "gets bigger"),
    "zoom-out": ("shrinks", "zooms out", "moves away", "gets smaller"),
}
FRAMES: tuple[str, ...] = (
    "{subject} {motion}",
    "{subject} {motion} on a black screen",
    "a clip where {subject} {motion}",
    "here {subject} {motion}",
)

_DIGIT_PATTERN = re.compile(r"\b(" + "|".join(DIGIT_WORDS) + r"|[0-9])\b")


def caption(digit: int, motion: str, subject: int, phrase: int, frame: int) -> str:
    """One caption from template indices."""
    text = SUBJECTS[subject].format(w=DIGIT_WORDS[digit], n=str(digit))
    return FRAMES[frame].format(subject=text, motion=MOTION_PHRASES[motion][phrase])


def sample_captions(digit: int, motion: str, count: int, rng: np.random.Generator) -> list[str]:
    """`count` distinct captions for one clip, drawn without replacement from all template combinations."""
    if motion not in MOTION_PHRASES:
        raise ValueError(f"unknown motion {motion!r}; expected one of {', '.join(MOTIONS)}")
    combos = len(SUBJECTS) * len(MOTION_PHRASES[motion]) * len(FRAMES)
    if count > combos:
        raise ValueError(f"at most {combos} distinct captions per clip, asked for {count}")
    picks = rng.choice(combos, size=count, replace=False)
    out = []
    for pick in picks.tolist():
        subject, rest = divmod(pick, len(MOTION_PHRASES[motion]) * len(FRAMES))
        phrase, frame = divmod(rest, len(FRAMES))
        out.append(caption(digit, motion, subject, phrase, frame))
    return out


def digits_in_caption(text: str) -> set[int]:
    """The digits a caption names (as words or numerals); used by tests and audits, never by training."""
    found = set()
    for token in _DIGIT_PATTERN.findall(text.lower()):
        found.add(int(token) if token.isdigit() else DIGIT_WORDS.index(token))
    return found


def motions_in_caption(text: str) -> set[str]:
    """The motion classes whose phrases occur in a caption."""
    return {m for m, phrases in MOTION_PHRASES.items() if any(p in text for p in phrases)}
