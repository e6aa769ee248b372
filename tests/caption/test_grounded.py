"""The grounded captioner: wording, relations, counting, word bounds, and never inventing."""

from __future__ import annotations

import functools
import os
import random
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from service.caption.english import colour_name, count_phrase, display_name
from service.caption.grounded import (
    MIN_DETECTION_CONF,
    MIN_TAG_CONF,
    Caption,
    framing,
    grounded_caption,
    orientation,
)
from service.caption.layout import relation
from service.domain.records import Color, ImageProperties
from service.infer.tagger import Tag, parse_class_names
from service.infer.yolox import Detection

REPO = Path(__file__).resolve().parents[2]
CASES = 300
# Colour words the captioner may use that are also class names.
DESCRIPTIVE = frozenset({("orange",)})


def _model_dir() -> Path:
    return Path(os.environ.get("LABELSVC_MODEL_DIR") or REPO.parent / "shared" / "models")


@functools.cache
def _coco_names() -> tuple[str, ...]:
    path = _model_dir() / "coco_classes.txt"
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


@functools.cache
def _imagenet_lines() -> tuple[str, ...]:
    path = _model_dir() / "imagenet_classes.txt"
    return tuple(line for line in path.read_text().splitlines() if line.strip())


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z0-9]+", text.lower()))


def _forms(name: str) -> set[tuple[str, ...]]:
    """Token tuples of a name, its plural variants and irregular plurals."""
    base = _tokens(name)
    if not base:
        return set()
    head, last = base[:-1], base[-1]
    lasts = {last, f"{last}s", f"{last}es"}
    if last.endswith("y"):
        lasts.add(f"{last[:-1]}ies")
    lasts |= {"person": {"people"}, "mouse": {"mice"}, "knife": {"knives"}}.get(last, set())
    return {(*head, form) for form in lasts}


@functools.cache
def _vocabulary() -> frozenset[tuple[str, ...]]:
    """Every COCO name (both spellings) and every ImageNet lemma, with plurals."""
    names: set[str] = set()
    for name in _coco_names():
        names |= {name, display_name(name)}
    for line in _imagenet_lines():
        names |= {lemma.strip() for lemma in line.split("\t", 1)[1].split(",")}
    vocab: set[tuple[str, ...]] = set()
    for name in names:
        vocab |= _forms(name)
    return frozenset(vocab)


def _spans(tokens: tuple[str, ...], phrases: Iterable[tuple[str, ...]]) -> list[tuple[int, int]]:
    wanted = set(phrases)
    longest = max((len(p) for p in wanted), default=0)
    return [
        (start, start + size)
        for start in range(len(tokens))
        for size in range(1, min(longest, len(tokens) - start) + 1)
        if tokens[start : start + size] in wanted
    ]


def _invented(text: str, allowed_names: Iterable[str]) -> list[str]:
    """Class names in ``text`` not covered by an occurrence of an allowed name."""
    tokens = _tokens(text)
    allowed: set[tuple[str, ...]] = set()
    for name in allowed_names:
        allowed |= _forms(name)
    covered = _spans(tokens, allowed)
    bad = []
    for start, end in _spans(tokens, _vocabulary() - DESCRIPTIVE):
        if not any(a <= start and end <= b for a, b in covered):
            bad.append(" ".join(tokens[start:end]))
    return bad


def _props(
    width: int = 640,
    height: int = 480,
    colours: Iterable[tuple[str, float]] = (("#d8c8a8", 0.5), ("#6e4a2a", 0.3)),
    brightness: float = 0.5,
    contrast: float = 0.2,
    sharpness: float = 150.0,
    colorfulness: float = 30.0,
) -> ImageProperties:
    return ImageProperties(
        width=width,
        height=height,
        dominant_colors=[Color(hex=h, fraction=f) for h, f in colours],
        brightness=brightness,
        contrast=contrast,
        sharpness=sharpness,
        colorfulness=colorfulness,
        phash="0" * 16,
    )


def _det(name: str, x1: float, y1: float, x2: float, y2: float, conf: float = 0.9) -> Detection:
    return Detection(0, name, conf, x1, y1, x2, y2)


def _words(text: str) -> int:
    return len(text.split())


def _random_case(rng: random.Random) -> tuple[list[Detection], list[Tag], ImageProperties]:
    width, height = rng.randint(16, 4000), rng.randint(16, 4000)
    coco = _coco_names()
    kinds = rng.sample(coco, rng.randint(1, 4))
    detections = []
    for _ in range(rng.choice((0, 0, 1, 2, 3, 5, 9))):
        x1, x2 = sorted(rng.uniform(0, width) for _ in range(2))
        y1, y2 = sorted(rng.uniform(0, height) for _ in range(2))
        detections.append(
            Detection(0, rng.choice(kinds), rng.uniform(0.05, 1.0), x1, y1, x2 + 1, y2 + 1)
        )
    tag_names = parse_class_names(_imagenet_lines())
    tags = [Tag(rng.choice(tag_names), rng.uniform(0.01, 0.9)) for _ in range(rng.randint(0, 5))]
    colours = [
        (f"#{rng.randrange(1 << 24):06x}", rng.uniform(0.01, 0.6)) for _ in range(rng.randint(0, 5))
    ]
    props = _props(
        width,
        height,
        colours,
        brightness=rng.random(),
        contrast=rng.uniform(0, 0.5),
        sharpness=10 ** rng.uniform(0, 3.5),
        colorfulness=rng.uniform(0, 120),
    )
    return detections, tags, props


def _random_captions() -> list[tuple[list[Detection], list[Tag], Caption]]:
    rng = random.Random(20240607)
    out = []
    for _ in range(CASES):
        detections, tags, props = _random_case(rng)
        out.append((detections, tags, grounded_caption(detections, tags, props)))
    return out


def test_cat_on_couch() -> None:
    detections = [
        _det("sofa", 0, 150, 640, 480),
        _det("cat", 220, 100, 420, 300),
    ]
    caption = grounded_caption(detections, [Tag("tabby", 0.6)], _props())
    assert caption.title == "A cat on a couch"
    assert caption.description.startswith("The photograph shows a cat on a couch")
    assert "tabby" in caption.description
    assert "sofa" not in caption.description
    assert caption.model == "grounded-v1"
    assert caption.scene_analysis.startswith("Close-up framing in landscape orientation")


def test_counting_and_plurals() -> None:
    people = [_det("person", 40 + 120 * i, 100, 140 + 120 * i, 400) for i in range(3)]
    dog = _det("dog", 500, 300, 600, 420)
    caption = grounded_caption([*people, dog], [], _props())
    assert caption.title == "Three people and a dog"
    assert "three people" in caption.description
    crowd = [_det("person", 60 * i, 100, 60 * i + 50, 300) for i in range(7)]
    assert grounded_caption(crowd, [], _props()).title == "A group of 7 people"
    dogs = [_det("dog", 0, 0, 100, 100), _det("dog", 300, 0, 400, 100)]
    assert grounded_caption(dogs, [], _props()).title == "Two dogs"


@pytest.mark.parametrize(
    ("name", "count", "expected"),
    [
        ("person", 1, "a person"),
        ("person", 3, "three people"),
        ("person", 12, "a group of 12 people"),
        ("bus", 2, "two buses"),
        ("knife", 4, "four knives"),
        ("sheep", 5, "five sheep"),
        ("wine glass", 2, "two wine glasses"),
        ("airplane", 1, "an airplane"),
        ("skis", 2, "two pairs of skis"),
        ("broccoli", 3, "some broccoli"),
        ("cake", 8, "8 cakes"),
        ("hourglass", 1, "an hourglass"),
        ("hay", 1, "some hay"),
        ("red wine", 1, "some red wine"),
    ],
)
def test_count_phrase(name: str, count: int, expected: str) -> None:
    assert count_phrase(name, count) == expected


def test_display_names() -> None:
    assert [display_name(n) for n in ("tvmonitor", "diningtable", "pottedplant")] == [
        "tv",
        "dining table",
        "potted plant",
    ]
    assert [display_name(n) for n in ("motorbike", "aeroplane", "sofa", "cat")] == [
        "motorcycle",
        "airplane",
        "couch",
        "cat",
    ]


def test_relations() -> None:
    couch = _det("sofa", 0, 150, 640, 480)
    assert relation(_det("cat", 220, 100, 420, 300), couch) == "on"
    # Not a support: a cat over a cup is never "on" it.
    assert relation(_det("cat", 220, 100, 420, 300), _det("cup", 0, 150, 640, 480)) != "on"
    bus = _det("bus", 0, 0, 600, 400)
    assert relation(_det("person", 250, 150, 330, 395), bus) == "in front of"
    assert relation(_det("kite", 100, 0, 200, 80), _det("person", 90, 200, 210, 400)) == "above"
    assert relation(_det("person", 90, 200, 210, 400), _det("kite", 100, 0, 200, 80)) == "below"
    assert relation(_det("dog", 0, 200, 100, 300), _det("person", 120, 100, 200, 310)) == (
        "next to"
    )
    assert relation(_det("dog", 0, 0, 50, 50), _det("car", 400, 400, 500, 500)) is None
    far = [_det("dog", 0, 0, 50, 50), _det("car", 400, 400, 500, 500)]
    assert grounded_caption(far, [], _props()).title == "A car and a dog"


def test_nothing_detected() -> None:
    caption = grounded_caption([], [Tag("tabby", 0.1)], _props())
    assert caption.title == "A photograph with no clearly identified objects"
    assert "tabby" not in caption.description + caption.scene_analysis
    assert _words(caption.description) >= 15
    assert "beige" in caption.description


def test_tags_only() -> None:
    tags = [Tag("tabby", 0.55), Tag("tiger cat", 0.3)]
    caption = grounded_caption([], tags, _props())
    assert caption.title == "A photo of a tabby"
    assert "a tabby, or possibly a tiger cat" in caption.description


def test_low_confidence_detections_ignored() -> None:
    caption = grounded_caption([_det("dog", 0, 0, 100, 100, conf=0.1)], [], _props())
    assert "dog" not in caption.title + caption.description + caption.scene_analysis


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        (0.9, "close-up"),
        (0.41, "close-up"),
        (0.4, "medium shot"),
        (0.1, "medium shot"),
        (0.099, "wide shot"),
        (0.0, "wide shot"),
    ],
)
def test_framing_thresholds(fraction: float, expected: str) -> None:
    assert framing(fraction) == expected


def test_framing_in_scene_analysis() -> None:
    wide = grounded_caption([_det("bird", 300, 200, 340, 240)], [], _props())
    assert wide.scene_analysis.startswith("Wide shot")
    medium = grounded_caption([_det("dog", 120, 100, 310, 400)], [], _props())
    assert medium.scene_analysis.startswith("Medium shot")
    assert "on the left third" in medium.scene_analysis


def test_orientation() -> None:
    assert orientation(640, 480) == "landscape"
    assert orientation(480, 640) == "portrait"
    assert orientation(500, 490) == "square"


@pytest.mark.parametrize(
    ("hex_colour", "expected"),
    [
        ("#000000", "black"),
        ("#ffffff", "white"),
        ("#808080", "grey"),
        ("#ff0000", "red"),
        ("#ffa500", "orange"),
        ("#ffff00", "yellow"),
        ("#00a000", "green"),
        ("#008080", "teal"),
        ("#0000ff", "blue"),
        ("#000080", "blue"),
        ("#800080", "purple"),
        ("#ffc0cb", "pink"),
        ("#8b4513", "brown"),
        ("#d8c8a8", "beige"),
        ("nonsense", None),
    ],
)
def test_colour_name(hex_colour: str, expected: str | None) -> None:
    assert colour_name(hex_colour) == expected


def test_an_uncountable_tag_reads_as_such() -> None:
    assert grounded_caption([], [Tag("hay", 0.6)], _props()).title == "A photo of some hay"


def test_greys_are_never_named_as_colours() -> None:
    """A black-and-white photo's palette is black, grey and white: in plain RGB distance
    dark greys lay nearer to brown and light greys nearer to beige."""
    names = {v: colour_name(f"#{v:02x}{v:02x}{v:02x}") for v in range(256)}
    assert set(names.values()) == {"black", "grey", "white"}
    assert names[53] == names[69] == names[186] == names[202] == "grey"
    assert colour_name("#6e645a") == "grey"  # a warm grey, channels 20 apart
    assert colour_name("#78461e") == "brown"


def test_light_and_sharpness_wording() -> None:
    dark = grounded_caption([], [], _props(brightness=0.1, contrast=0.4, sharpness=10))
    assert "Low-key exposure with high contrast" in dark.scene_analysis
    assert "soft overall" in dark.scene_analysis
    bright = grounded_caption([], [], _props(brightness=0.8, contrast=0.05, colorfulness=90))
    assert "high-key exposure with low contrast" in bright.scene_analysis
    assert "vivid palette" in bright.scene_analysis


def test_deterministic_and_order_independent() -> None:
    detections = [_det("sofa", 0, 150, 640, 480), _det("cat", 220, 100, 420, 300)]
    first = grounded_caption(detections, [Tag("tabby", 0.6)], _props())
    assert grounded_caption(detections[::-1], [Tag("tabby", 0.6)], _props()) == first


def test_word_bounds_on_random_inputs() -> None:
    for _, _, caption in _random_captions():
        assert 2 <= _words(caption.title) <= 8, caption.title
        assert _words(caption.description) >= 15, caption.description
        assert 20 <= _words(caption.scene_analysis) <= 40, caption.scene_analysis


def test_never_invents_objects_on_random_inputs() -> None:
    for detections, tags, caption in _random_captions():
        allowed = [d.classname for d in detections if d.conf >= MIN_DETECTION_CONF]
        allowed += [display_name(name) for name in allowed]
        allowed += [t.name for t in tags if t.conf >= MIN_TAG_CONF]
        text = f"{caption.title}. {caption.description} {caption.scene_analysis}"
        assert _invented(text, allowed) == [], (text, allowed)


def test_checker_catches_invention() -> None:
    assert _invented("A dog next to a couch", ["dog"]) == ["couch"]
    assert _invented("Two tiger cats", ["tiger cat"]) == []
    assert _invented("Three people", ["dog"]) == ["people"]
