"""Deterministic captions built only from detections, tags and pixel properties.

Every object noun in the output is a detected class name or a confident tag name; all the
other words describe composition, exposure, colour and sharpness. The same inputs always
give the same caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.caption.english import (
    MASS_NOUNS,
    PAIRED_NOUNS,
    cap,
    colour_name,
    count_phrase,
    display_name,
    join_and,
    plural,
    word_count,
)
from service.caption.layout import area, relation
from service.domain.records import Caption, ImageProperties
from service.infer.tagger import Tag
from service.infer.yolox import Detection

MODEL = "grounded-v1"
MIN_DETECTION_CONF = 0.25
MIN_TAG_CONF = 0.2
MAX_KINDS = 3
TITLE_WORDS = (2, 8)
DESCRIPTION_MIN_WORDS = 15
ANALYSIS_WORDS = (20, 40)

# Framing from the fraction of the frame the main subject's box covers.
CLOSE_UP_FRACTION = 0.40
MEDIUM_SHOT_FRACTION = 0.10
# Exposure from mean luma, contrast from its standard deviation (both 0-1).
LOW_KEY_BRIGHTNESS = 0.35
HIGH_KEY_BRIGHTNESS = 0.65
LOW_CONTRAST = 0.15
HIGH_CONTRAST = 0.28
# Hasler-Suesstrunk colourfulness: ~15 slightly, ~33 moderately, >~60 very colourful.
MUTED_COLORFULNESS = 20.0
VIVID_COLORFULNESS = 60.0
# Variance of the Laplacian on the <= 256 px grey copy.
SOFT_SHARPNESS = 50.0
CRISP_SHARPNESS = 300.0
MIN_PALETTE_FRACTION = 0.1


@dataclass(frozen=True, slots=True)
class _Kind:
    """All confident detections of one class, largest box first."""

    name: str
    boxes: tuple[Detection, ...]

    @property
    def count(self) -> int:
        return len(self.boxes)

    @property
    def largest(self) -> Detection:
        return self.boxes[0]


def framing(fraction: float) -> str:
    """``close-up`` (> 40% of the frame), ``medium shot`` (10-40%) or ``wide shot``."""
    if fraction > CLOSE_UP_FRACTION:
        return "close-up"
    if fraction >= MEDIUM_SHOT_FRACTION:
        return "medium shot"
    return "wide shot"


def orientation(width: int, height: int) -> str:
    """``landscape``, ``portrait`` or ``square`` (within 5%)."""
    ratio = max(width, 1) / max(height, 1)
    if ratio > 1.05:
        return "landscape"
    if ratio < 1 / 1.05:
        return "portrait"
    return "square"


def _kinds(detections: Sequence[Detection]) -> list[_Kind]:
    confident = [d for d in detections if d.conf >= MIN_DETECTION_CONF and area(d) > 0.0]
    confident.sort(key=lambda d: (-area(d), -d.conf, d.classname, d.x1, d.y1))
    groups: dict[str, list[Detection]] = {}
    for box in confident:
        groups.setdefault(display_name(box.classname), []).append(box)
    # dicts keep insertion order, so the kind of the largest box comes first.
    return [_Kind(name, tuple(boxes)) for name, boxes in groups.items()]


def _usable_tags(tags: Sequence[Tag]) -> list[Tag]:
    usable = [t for t in tags if t.conf >= MIN_TAG_CONF and t.name.strip()]
    usable.sort(key=lambda t: (-t.conf, t.name))
    return [Tag(t.name.strip().replace("_", " "), t.conf) for t in usable]


def _kind_relation(first: _Kind, second: _Kind, wanted: Sequence[str]) -> str | None:
    """A relation in ``wanted`` that every box of ``first`` has to the single ``second``."""
    if second.count != 1:
        return None
    found = {relation(box, second.largest) for box in first.boxes}
    if len(found) == 1:
        (rel,) = found
        if rel in wanted:
            return rel
    return None


def _pair_phrase(kinds: Sequence[_Kind]) -> str | None:
    """``a cat on a couch`` for the main subject and the next kind, when a relation holds."""
    if len(kinds) < 2:
        return None
    main, other = kinds[0], kinds[1]
    # The dependent object goes first: the cat is on the couch even when the couch is larger.
    for first, second, wanted in (
        (other, main, ("on", "in front of")),
        (main, other, ("on", "in front of", "above", "below", "next to")),
    ):
        rel = _kind_relation(first, second, wanted)
        if rel is not None:
            return (
                f"{count_phrase(first.name, first.count)} {rel} "
                f"{count_phrase(second.name, second.count)}"
            )
    return None


def _objects_phrase(kinds: Sequence[_Kind]) -> str:
    pair = _pair_phrase(kinds)
    if pair is None:
        return join_and([count_phrase(k.name, k.count) for k in kinds[:MAX_KINDS]])
    if len(kinds) > 2:
        return f"{pair}, along with {count_phrase(kinds[2].name, kinds[2].count)}"
    return pair


def _definite(kind: _Kind) -> str:
    if kind.count == 1 or kind.name in MASS_NOUNS or kind.name in PAIRED_NOUNS:
        return f"the {kind.name}"
    return f"the {plural(kind.name)}"


def _position(kind: _Kind, width: int) -> str:
    """Where the kind sits horizontally, for the description."""
    centres = [(b.x1 + b.x2) / 2 / max(width, 1) for b in kind.boxes]
    if kind.count > 1 and min(centres) < 1 / 3 and max(centres) > 2 / 3:
        return "spread across the frame"
    mean = sum(centres) / len(centres)
    prefix = "grouped " if kind.count > 1 else ""
    if mean < 1 / 3:
        return f"{prefix}on the left of the frame"
    if mean > 2 / 3:
        return f"{prefix}on the right of the frame"
    return f"{prefix}near the centre of the frame"


def _placement(box: Detection, width: int) -> str:
    """Placement of the main subject's centre: centred, on a third, or off-centre."""
    x = (box.x1 + box.x2) / 2 / max(width, 1)
    if abs(x - 0.5) <= 0.08:
        return "centred"
    if abs(x - 1 / 3) <= 0.08:
        return "on the left third"
    if abs(x - 2 / 3) <= 0.08:
        return "on the right third"
    return "off-centre to the left" if x < 0.5 else "off-centre to the right"


def _exposure(brightness: float) -> str:
    if brightness < LOW_KEY_BRIGHTNESS:
        return "low-key"
    if brightness > HIGH_KEY_BRIGHTNESS:
        return "bright"
    return "balanced"


def _contrast(contrast: float) -> str:
    if contrast < LOW_CONTRAST:
        return "low"
    if contrast > HIGH_CONTRAST:
        return "high"
    return "moderate"


def _saturation(colorfulness: float) -> str:
    if colorfulness < MUTED_COLORFULNESS:
        return "muted"
    if colorfulness > VIVID_COLORFULNESS:
        return "vivid"
    return "natural"


def palette_names(props: ImageProperties) -> list[str]:
    """Up to three colour names covering >= 10% of the image each, most common first."""
    totals: dict[str, float] = {}
    for colour in sorted(props.dominant_colors, key=lambda c: (-c.fraction, c.hex)):
        name = colour_name(colour.hex)
        if name is not None:
            totals[name] = totals.get(name, 0.0) + colour.fraction
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    names = [name for name, fraction in ranked if fraction >= MIN_PALETTE_FRACTION]
    return (names or [name for name, _ in ranked])[:3]


def _palette_phrase(props: ImageProperties, *, long: bool) -> str:
    saturation = _saturation(props.colorfulness)
    names = palette_names(props)
    if not names:
        return f"a {saturation} palette"
    if long:
        text = f"a {saturation} palette dominated by {join_and(names[:2])}"
        if len(names) > 2:
            text += f", with touches of {names[2]}"
        return text
    return f"a {saturation} palette of {join_and(names[:2])}"


def _light_sentence(props: ImageProperties) -> str:
    exposure = {
        "low-key": "dark and low-key",
        "bright": "bright",
        "balanced": "evenly exposed",
    }[_exposure(props.brightness)]
    return (
        f"The scene is {exposure}, with {_contrast(props.contrast)} contrast and "
        f"{_palette_phrase(props, long=False)}."
    )


def _fit(text: str, low: int, high: int) -> str:
    """Clip to at most ``high`` words; the callers' pads keep it above ``low``."""
    words = text.split()
    if len(words) <= high:
        return text
    return " ".join(words[:high]).rstrip(",;:.") + "."


def _title(kinds: Sequence[_Kind], tags: Sequence[Tag]) -> str:
    low, high = TITLE_WORDS
    candidates: list[str] = []
    if kinds:
        pair = _pair_phrase(kinds)
        if pair is not None:
            candidates.append(pair)
        phrases = [count_phrase(k.name, k.count) for k in kinds]
        candidates += [join_and(phrases[:3]), join_and(phrases[:2]), phrases[0]]
        candidates.append(count_phrase(kinds[0].name, 1))
    elif tags:
        top = tags[0]
        a_name = count_phrase(top.name, 1)
        if top.conf >= 0.5:
            candidates.append(f"A photo of {a_name}")
        candidates += [f"Possibly {a_name}", a_name]
    else:
        candidates.append("A photograph with no clearly identified objects")
    for candidate in candidates:
        if low <= word_count(candidate) <= high:
            return cap(candidate)
    return cap(_fit(candidates[-1], low, high).rstrip("."))


def _description(
    kinds: Sequence[_Kind], tags: Sequence[Tag], props: ImageProperties, shape: str
) -> str:
    light = _light_sentence(props)
    if kinds:
        main = kinds[0]
        extra = ""
        if len(kinds) < MAX_KINDS:
            detected_words = {w for k in kinds for w in k.name.lower().split()}
            for tag in tags:
                if not detected_words & set(tag.name.lower().split()):
                    extra = f"; the overall look also suggests {count_phrase(tag.name, 1)}"
                    break
        first = (
            f"The photograph shows {_objects_phrase(kinds)}, with "
            f"{_definite(main)} {_position(main, props.width)}{extra}."
        )
    elif tags:
        guesses = [count_phrase(t.name, 1) for t in tags[:2]]
        alternative = f", or possibly {guesses[1]}" if len(guesses) > 1 else ""
        first = (
            f"The image most likely shows {guesses[0]}{alternative}, "
            f"though no individual objects were located in this {shape} frame."
        )
    else:
        first = f"No objects could be identified with confidence in this {shape} image."
    text = f"{cap(first)} {light}"
    if word_count(text) < DESCRIPTION_MIN_WORDS:
        text += f" The frame measures {props.width} by {props.height} pixels."
    return text


def _scene_analysis(kinds: Sequence[_Kind], props: ImageProperties, shape: str) -> str:
    low, high = ANALYSIS_WORDS
    if kinds:
        main = kinds[0]
        box = main.largest
        fraction = area(box) / max(props.width * props.height, 1)
        subject = f"the {main.name}" if main.count == 1 else f"the most prominent {main.name}"
        shot = {
            "close-up": "Close-up framing",
            "medium shot": "Medium shot",
            "wide shot": "Wide shot",
        }[framing(fraction)]
        place = _placement(box, props.width)
        percent = max(1, round(fraction * 100))
        framing_variants = (
            f"{shot} in {shape} orientation, with {subject} {place} "
            f"and covering about {percent}% of the frame.",
            f"{shot}, {shape} orientation, subject {place}.",
        )
    else:
        framing_variants = (
            f"{cap(shape)} frame with no located subject, "
            "so the composition rests on tone and colour.",
            f"{cap(shape)} frame with no located subject.",
        )
    exposure = {"low-key": "Low-key", "bright": "Bright, high-key", "balanced": "Balanced"}[
        _exposure(props.brightness)
    ]
    light_variants = (f"{exposure} exposure with {_contrast(props.contrast)} contrast.",) * 2
    colour_variants = (
        cap(_palette_phrase(props, long=True)) + ".",
        cap(_palette_phrase(props, long=False)) + ".",
    )
    if props.sharpness < SOFT_SHARPNESS:
        sharp_variants = (
            "The image is soft overall, suggesting motion blur or shallow focus.",
            "Soft overall, possibly from blur.",
        )
    elif props.sharpness < CRISP_SHARPNESS:
        sharp_variants = (
            "Moderately sharp overall, with reasonable detail.",
            "Moderately sharp detail.",
        )
    else:
        sharp_variants = (
            "Crisp overall, with fine detail and well-defined edges.",
            "Crisp detail throughout.",
        )
    parts = [framing_variants, light_variants, colour_variants, sharp_variants]
    chosen = [0, 0, 0, 0]
    # Shorten the least informative parts first: colour detail, sharpness, then framing.
    for index in (2, 3, 0):
        if word_count(" ".join(p[c] for p, c in zip(parts, chosen, strict=True))) <= high:
            break
        chosen[index] = 1
    text = " ".join(p[c] for p, c in zip(parts, chosen, strict=True))
    pads = (
        f"The frame measures {props.width} by {props.height} pixels.",
        "Tone and colour carry the composition.",
        "No further cues are available.",
    )
    for pad in pads:
        if word_count(text) >= low:
            break
        text = f"{text} {pad}"
    return _fit(text, low, high)


def grounded_caption(
    detections: Sequence[Detection], tags: Sequence[Tag], props: ImageProperties
) -> Caption:
    """Caption an image from its detections, tags and properties, naming nothing else."""
    kinds = _kinds(detections)
    usable = _usable_tags(tags)
    shape = orientation(props.width, props.height)
    return Caption(
        title=_title(kinds, usable),
        description=_description(kinds, usable, props, shape),
        scene_analysis=_scene_analysis(kinds, props, shape),
        model=MODEL,
    )
