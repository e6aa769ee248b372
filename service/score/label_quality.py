"""Label-quality estimate: how likely the machine labels of one image are right, in [0, 1].

This first estimate uses the detector's confidence profile alone: the mean confidence of the
kept boxes, discounted by the share of boxes in the ambiguous band where detectors are most
often wrong. An image with no kept boxes gets a neutral 0.5: "nothing found" is as likely
right as wrong without a second opinion.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.domain.records import Box

AMBIGUOUS_BAND = (0.25, 0.5)
NO_DETECTIONS_SCORE = 0.5


def label_quality(boxes: Sequence[Box]) -> float:
    if not boxes:
        return NO_DETECTIONS_SCORE
    confidences = [box.conf for box in boxes]
    mean = sum(confidences) / len(confidences)
    low, high = AMBIGUOUS_BAND
    ambiguous = sum(low <= c < high for c in confidences) / len(confidences)
    return round(min(max(mean * (1.0 - 0.5 * ambiguous), 0.0), 1.0), 4)
