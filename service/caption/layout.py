"""Where detected objects sit relative to each other, from their boxes alone."""

from __future__ import annotations

from service.caption.english import display_name
from service.infer.yolox import Detection

# Things another object can plausibly rest "on"; elsewhere "on" is never claimed.
SUPPORTS = frozenset(
    {
        "bed",
        "bench",
        "bicycle",
        "boat",
        "bus",
        "car",
        "chair",
        "couch",
        "cow",
        "dining table",
        "elephant",
        "horse",
        "motorcycle",
        "refrigerator",
        "skateboard",
        "surfboard",
        "toilet",
        "train",
        "truck",
    }
)


def area(box: Detection) -> float:
    """The box's area in pixels (0 for a degenerate box)."""
    return max(0.0, box.x2 - box.x1) * max(0.0, box.y2 - box.y1)


def _overlap(a1: float, a2: float, b1: float, b2: float) -> float:
    return max(0.0, min(a2, b2) - max(a1, b1))


def relation(a: Detection, b: Detection) -> str | None:
    """How box ``a`` sits relative to box ``b``, or None when nothing safe can be said.

    ``on``: ``b`` can support things, ``a`` is smaller, mostly over ``b`` horizontally,
    and its bottom edge lies between just above ``b``'s top and ``b``'s middle.
    ``in front of``: ``a`` is at most half ``b``'s size, mostly inside it, and reaches
    down to ``b``'s bottom. ``above``/``below``: horizontally overlapping, vertically
    apart. ``next to``: vertically aligned and horizontally close without much overlap.
    """
    aw, ah = a.x2 - a.x1, a.y2 - a.y1
    bw, bh = b.x2 - b.x1, b.y2 - b.y1
    if min(aw, ah, bw, bh) <= 0.0:
        return None
    a_area, b_area = aw * ah, bw * bh
    x_overlap = _overlap(a.x1, a.x2, b.x1, b.x2)
    y_overlap = _overlap(a.y1, a.y2, b.y1, b.y2)
    intersection = x_overlap * y_overlap
    if (
        display_name(b.classname) in SUPPORTS
        and a_area < b_area
        and x_overlap >= 0.5 * aw
        and b.y1 - 0.1 * bh <= a.y2 <= b.y1 + 0.6 * bh
        and (a.y1 + a.y2) < (b.y1 + b.y2)
    ):
        return "on"
    if a_area <= 0.5 * b_area and intersection >= 0.6 * a_area and a.y2 >= b.y2 - 0.15 * bh:
        return "in front of"
    tolerance = 0.05 * min(ah, bh)
    if x_overlap >= 0.3 * min(aw, bw):
        if a.y2 <= b.y1 + tolerance:
            return "above"
        if a.y1 >= b.y2 - tolerance:
            return "below"
    if y_overlap >= 0.5 * min(ah, bh) and intersection <= 0.3 * min(a_area, b_area):
        gap = max(b.x1 - a.x2, a.x1 - b.x2)
        ratio = a_area / b_area
        if gap <= 0.5 * max(aw, bw) and 1 / 8 <= ratio <= 8:
            return "next to"
    return None
