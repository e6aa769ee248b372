"""The neural captioner's text in the record: as title and opening sentence, or not at all."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from service.analysis import with_neural_text
from service.domain.records import Caption

GROUNDED = Caption(
    title="A cat on a sofa",
    description="The photograph shows a cat lying on a sofa in a living room by a window.",
    scene_analysis="A medium shot.",
    model="grounded-v1",
)
ANALYZER: Any = SimpleNamespace(models=SimpleNamespace(captioner=SimpleNamespace(name="blip")))


def test_the_text_opens_the_description_and_is_the_title() -> None:
    caption = with_neural_text(GROUNDED, "  a cat  on a\nsofa ", ANALYZER)
    assert caption.title == "A cat on a sofa"
    assert caption.description == f"A cat on a sofa. {GROUNDED.description}"
    assert (caption.scene_analysis, caption.model) == (GROUNDED.scene_analysis, "blip")


@pytest.mark.parametrize("text", ["", "   ", ".", "...", " . ! ?", "\u2026"])
def test_text_without_a_word_leaves_the_grounded_caption(text: str) -> None:
    assert with_neural_text(GROUNDED, text, ANALYZER) == GROUNDED
