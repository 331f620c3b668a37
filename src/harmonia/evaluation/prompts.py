"""Zero-shot class prompts for AV-MNIST-T, from the dataset's own caption templates.

A class's prompts are captions that name it, with every value of the other attribute and every
subject/motion phrasing (one sentence frame), so the averaged class embedding describes the class
and not a particular paraphrase or the other attribute.
"""

from __future__ import annotations

from harmonia.data.captions import MOTION_PHRASES, SUBJECTS, caption
from harmonia.data.spec import DIGIT_WORDS, MOTIONS

_FRAME = 0  # "{subject} {motion}": the plainest sentence frame


def _phrasings(digit: int, motion: str) -> list[str]:
    return [
        caption(digit, motion, subject, phrase, _FRAME)
        for subject in range(len(SUBJECTS))
        for phrase in range(len(MOTION_PHRASES[motion]))
    ]


def digit_prompts() -> dict[int, list[str]]:
    """digit -> prompts naming that digit (over all motions and phrasings)."""
    return {d: [p for m in MOTIONS for p in _phrasings(d, m)] for d in range(len(DIGIT_WORDS))}


def motion_prompts() -> dict[str, list[str]]:
    """motion -> prompts naming that motion (over all digits and phrasings)."""
    return {m: [p for d in range(len(DIGIT_WORDS)) for p in _phrasings(d, m)] for m in MOTIONS}
