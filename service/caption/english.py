"""English wording for the grounded captioner: readable class names, plurals, articles,
counts, colour names and word lists."""

from __future__ import annotations

from collections.abc import Sequence

DISPLAY_NAMES = {
    "tvmonitor": "tv",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
}
IRREGULAR_PLURALS = {"person": "people", "mouse": "mice", "knife": "knives"}
UNCHANGED_PLURALS = frozenset({"sheep", "fish", "deer"})
# Uncountable: "some hay", never "a hay" (the COCO name and the ImageNet tags that are).
MASS_NOUNS = frozenset(
    {
        "broccoli",
        "chain mail",
        "velvet",
        "wool",
        "guacamole",
        "consomme",
        "trifle",
        "ice cream",
        "mashed potato",
        "hay",
        "carbonara",
        "chocolate sauce",
        "dough",
        "meat loaf",
        "red wine",
        "espresso",
        "eggnog",
    }
)
PAIRED_NOUNS = frozenset({"skis", "scissors"})
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
# Colours whose channels differ by less than this are black, grey or white.
NEUTRAL_CHROMA = 24
# Several anchors may share a name so that, e.g., navy and light blue both read as blue.
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (0, 0, 0)),
    ("black", (30, 30, 35)),
    ("grey", (96, 96, 96)),
    ("grey", (160, 160, 160)),
    ("white", (255, 255, 255)),
    ("white", (230, 230, 235)),
    ("red", (200, 30, 30)),
    ("red", (130, 20, 25)),
    ("orange", (240, 140, 20)),
    ("yellow", (240, 220, 40)),
    ("green", (50, 150, 50)),
    ("green", (30, 80, 30)),
    ("green", (120, 130, 50)),
    ("teal", (0, 128, 128)),
    ("blue", (40, 80, 200)),
    ("blue", (20, 30, 100)),
    ("blue", (120, 170, 220)),
    ("purple", (120, 50, 150)),
    ("pink", (240, 150, 180)),
    ("brown", (120, 70, 30)),
    ("brown", (80, 50, 30)),
    ("beige", (215, 195, 155)),
)


def display_name(classname: str) -> str:
    """Human-readable name of a detector class (``sofa`` -> ``couch``)."""
    return DISPLAY_NAMES.get(classname, classname.replace("_", " "))


def plural(name: str) -> str:
    """English plural of a (possibly multi-word) object name."""
    head, _, last = name.rpartition(" ")
    prefix = f"{head} " if head else ""
    if last in IRREGULAR_PLURALS:
        return prefix + IRREGULAR_PLURALS[last]
    if last in UNCHANGED_PLURALS or last in PAIRED_NOUNS or last in MASS_NOUNS:
        return name
    if last.endswith(("s", "sh", "ch", "x", "z")):
        return f"{name}es"
    if len(last) > 1 and last.endswith("y") and last[-2] not in "aeiou":
        return f"{name[:-1]}ies"
    return f"{name}s"


def article(name: str) -> str:
    """``a`` or ``an`` for a noun phrase, by its first letter with common exceptions."""
    lower = name.lower()
    if lower[:1] in ("a", "e", "i", "o", "u") and not lower.startswith(("uni", "use", "eu", "one")):
        return "an"
    if lower.startswith(("hour", "honest", "honor", "honour", "heir")):  # a silent h
        return "an"
    return "a"


def count_phrase(name: str, count: int) -> str:
    """``a cat``, ``two dogs``, ``three people``, ``a group of 7 people``."""
    if name in MASS_NOUNS:
        return f"some {name}"
    if name in PAIRED_NOUNS:
        if count == 1:
            return f"a pair of {name}"
        return f"{NUMBER_WORDS.get(count, str(count))} pairs of {name}"
    if count == 1:
        return f"{article(name)} {name}"
    if name == "person" and count >= 6:
        return f"a group of {count} people"
    return f"{NUMBER_WORDS.get(count, str(count))} {plural(name)}"


def colour_name(hex_colour: str) -> str | None:
    """Nearest name in a small fixed palette for ``#rrggbb``; None when unparsable."""
    digits = hex_colour.strip().removeprefix("#")
    if len(digits) != 6:
        return None
    try:
        rgb = (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
    except ValueError:
        return None
    if max(rgb) - min(rgb) < NEUTRAL_CHROMA:
        # Greys by lightness alone: in plain RGB distance a dark grey lies nearer to the brown
        # anchors and a light grey nearer to beige than to any grey.
        lightness = sum(rgb) / 3
        return "black" if lightness < 50 else "white" if lightness >= 205 else "grey"
    best_name, best_distance = "grey", float("inf")
    for name, anchor in PALETTE:
        distance = sum((c - a) ** 2 for c, a in zip(rgb, anchor, strict=True))
        if distance < best_distance:
            best_name, best_distance = name, distance
    return best_name


def cap(text: str) -> str:
    """The text with its first letter in upper case."""
    return text[:1].upper() + text[1:]


def word_count(text: str) -> int:
    """Words separated by white space."""
    return len(text.split())


def join_and(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"
