"""Caption similarity metrics: exact matches, unrelated text, several references per image."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bench.caption_similarity import caption_similarity, load_human_captions

# No word in common between any two of these.
DOG = "a brown dog runs along the sandy beach"
CAT = "grey cat sleeping on red couch"
TRAIN = "old steam train crossing stone bridge"
KITCHEN = "two people cooking dinner in small kitchen"


def bag_of_words(texts: Sequence[str]) -> np.ndarray:
    """A stand-in embedding: word counts over the words seen, so overlap sets the cosine."""
    tokens = [re.findall(r"\w+", text.lower()) for text in texts]
    vocabulary = {word: i for i, word in enumerate(sorted({w for t in tokens for w in t}))}
    vectors = np.zeros((len(texts), len(vocabulary)))
    for row, words in enumerate(tokens):
        for word in words:
            vectors[row, vocabulary[word]] += 1
    return vectors


def test_identical_text_scores_perfectly() -> None:
    scores = caption_similarity(
        {"a.jpg": DOG, "b.jpg": CAT}, {"a.jpg": [DOG], "b.jpg": [CAT]}, embed=bag_of_words
    )
    assert scores["bleu4"] == pytest.approx(1.0)
    assert scores["rouge_l"] == pytest.approx(1.0)
    assert scores["cosine"] == pytest.approx(1.0)
    assert scores["images"] == 2
    assert scores["references"] == 2


def test_unrelated_text_scores_low() -> None:
    scores = caption_similarity(
        {"a.jpg": TRAIN, "b.jpg": KITCHEN}, {"a.jpg": [CAT], "b.jpg": [DOG]}, embed=bag_of_words
    )
    assert scores["bleu4"] < 0.05
    assert scores["rouge_l"] < 0.2
    assert scores["cosine"] < 0.2


def test_bleu_and_rouge_ignore_case() -> None:
    scores = caption_similarity({"a.jpg": DOG.upper()}, {"a.jpg": [DOG]})
    assert scores["bleu4"] == pytest.approx(1.0)
    assert scores["rouge_l"] == pytest.approx(1.0)


def test_matching_any_one_reference_is_enough_for_bleu_and_rouge() -> None:
    scores = caption_similarity({"a.jpg": DOG}, {"a.jpg": [TRAIN, KITCHEN, DOG]})
    assert scores["bleu4"] == pytest.approx(1.0)
    assert scores["rouge_l"] == pytest.approx(1.0)
    assert scores["references"] == 3


def test_a_closer_extra_reference_raises_bleu_and_rouge() -> None:
    candidate = {"a.jpg": "a brown dog runs on the beach"}
    one = caption_similarity(candidate, {"a.jpg": [CAT]})
    two = caption_similarity(candidate, {"a.jpg": [CAT, DOG]})
    assert two["rouge_l"] > one["rouge_l"] + 0.3
    assert two["bleu4"] > one["bleu4"] + 0.2


def test_cosine_is_averaged_over_references() -> None:
    # Identical to one reference, sharing no word with the other: (1 + 0) / 2.
    scores = caption_similarity({"a.jpg": DOG}, {"a.jpg": [DOG, TRAIN]}, embed=bag_of_words)
    assert scores["cosine"] == pytest.approx(0.5)


def test_images_may_have_different_numbers_of_references() -> None:
    scores = caption_similarity(
        {"a.jpg": DOG, "b.jpg": CAT},
        {"a.jpg": [DOG], "b.jpg": [TRAIN, KITCHEN, CAT]},
        embed=bag_of_words,
    )
    assert scores["bleu4"] == pytest.approx(1.0)
    assert scores["rouge_l"] == pytest.approx(1.0)
    assert scores["cosine"] == pytest.approx((1.0 + 1.0 / 3.0) / 2.0, abs=1e-3)
    assert scores["references"] == 4


def test_an_image_with_fewer_references_is_not_scored_against_an_empty_one() -> None:
    # "grey cat" is much shorter than its one reference: BLEU's brevity penalty must count.
    # A second reference for the other image must not hand it an empty reference as well,
    # whose length (0) would be the closest and lift the penalty.
    candidates = {"a.jpg": DOG, "b.jpg": "grey cat sleeping"}
    alone = caption_similarity(candidates, {"a.jpg": [DOG], "b.jpg": [CAT]})
    beside = caption_similarity(candidates, {"a.jpg": [DOG, TRAIN], "b.jpg": [CAT]})
    assert beside["bleu4"] == pytest.approx(alone["bleu4"])


def test_only_candidates_are_scored_and_cosine_needs_an_embedder() -> None:
    scores = caption_similarity({"a.jpg": DOG}, {"a.jpg": [DOG], "b.jpg": [CAT]})
    assert "cosine" not in scores
    assert scores["images"] == 1
    assert scores["references"] == 1


def test_a_candidate_without_references_is_an_error() -> None:
    with pytest.raises(ValueError, match="reference"):
        caption_similarity({"a.jpg": DOG}, {"a.jpg": []})
    with pytest.raises(KeyError):
        caption_similarity({"a.jpg": DOG}, {"b.jpg": [DOG]})
    with pytest.raises(ValueError, match="no candidates"):
        caption_similarity({}, {"a.jpg": [DOG]})


def test_human_captions_are_grouped_per_file_in_annotation_order(tmp_path: Path) -> None:
    path = tmp_path / "captions.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
                "annotations": [
                    {"id": 30, "image_id": 1, "caption": "Second  caption. "},
                    {"id": 10, "image_id": 1, "caption": "First caption."},
                    {"id": 20, "image_id": 2, "caption": "Only caption."},
                ],
            }
        ),
        encoding="utf-8",
    )
    assert load_human_captions(path) == {
        "a.jpg": ["First caption.", "Second caption."],
        "b.jpg": ["Only caption."],
    }
