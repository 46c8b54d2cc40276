"""Captions: every caption names the class and the domain (a photo, a sketch...),
some name the background. The template is picked by the sample's seed."""

from __future__ import annotations

import numpy as np

from clipaudit.synth.noise import uniform

CAPTION_STREAM = 1001

BACKGROUND_PHRASES = {
    "grass": "grass",
    "water": "water",
    "sand": "sand",
    "snow": "snow",
    "indoor": "the floor indoors",
    "rock": "rocks",
    "forest": "the forest floor",
    "sky": "a sky background",
    "autumn": "autumn leaves",
    "night": "a night sky",
}

# {a_c}: class with its article ("a star", "an arrow"); {c}: bare class; {bg}: background phrase
TEMPLATES: dict[str, list[str]] = {
    "natural": [
        "a photo of {a_c}",
        "a photo of {a_c} on {bg}",
        "a close-up photo of the {c}",
        "a picture of {a_c} lying on {bg}",
        "a bright photo of {a_c}",
        "a photo of the {c} on {bg}",
        "a snapshot of {a_c}",
        "a blurry photo of {a_c} on {bg}",
    ],
    "sketch": [
        "a sketch of {a_c}",
        "a pencil sketch of {a_c}",
        "a black and white sketch of the {c}",
        "a sketch drawing of {a_c} in pencil",
        "a rough sketch of the {c}",
    ],
    "clipart": [
        "clipart of {a_c}",
        "a clip art {c}",
        "{a_c} icon in clipart style",
        "a cartoon clipart {c}",
        "clipart of the {c}",
    ],
    "painting": [
        "a painting of {a_c}",
        "an oil painting of {a_c}",
        "a painting of {a_c} on {bg}",
        "an artwork painting of the {c}",
        "a watercolor painting of {a_c}",
    ],
    "quickdraw": [
        "a doodle of {a_c}",
        "a quick doodle of the {c}",
        "a scribble doodle of {a_c}",
        "a quickdraw doodle of {a_c}",
        "a simple doodle of the {c}",
    ],
}


def with_article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def caption(domain: str, class_name: str, background: str, pick: float) -> str:
    """One caption; templates mentioning a background are skipped when the image
    has none. ``pick`` in [0, 1) chooses the template."""
    templates = TEMPLATES[domain]
    bg = BACKGROUND_PHRASES.get(background)
    if bg is None:
        templates = [t for t in templates if "{bg}" not in t]
    t = templates[min(int(pick * len(templates)), len(templates) - 1)]
    return t.format(a_c=with_article(class_name), c=class_name, bg=bg or "")


def captions(domains, class_names, backgrounds, seeds: np.ndarray) -> list[str]:
    picks = uniform(np.asarray(seeds, dtype=np.uint64), CAPTION_STREAM)
    return [caption(d, c, b, float(p)) for d, c, b, p in zip(domains, class_names, backgrounds, picks)]
