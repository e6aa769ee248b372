"""Search keywords: normalisation shared by records and search text."""

from __future__ import annotations

import pytest

from service.query.keywords import (
    MAX_SEARCH_TERMS,
    keywords_for,
    lemma,
    search_forms,
    search_terms,
)


@pytest.mark.parametrize(
    ("word", "singular"),
    [
        ("dogs", "dog"),
        ("puppies", "puppy"),
        ("boxes", "box"),
        ("benches", "bench"),
        ("glasses", "glass"),
        ("knives", "knife"),
        ("people", "person"),
        ("buses", "bus"),
        ("bus", "bus"),
        ("grass", "grass"),
        ("tennis", "tennis"),
        ("skis", "ski"),
        ("horses", "horse"),
        ("cat", "cat"),
    ],
)
def test_lemma(word: str, singular: str) -> None:
    assert lemma(word) == singular


def test_keywords_for_classes_tags_and_captions() -> None:
    words = keywords_for(
        ["dog", "diningtable", "cell phone"],
        ["Golden Retriever"],
        ["Two dogs sleeping on the sofa.", "A dog's toys"],
    )
    assert words == sorted(set(words))
    for expected in ("dog", "dining", "table", "diningtable", "cell", "phone", "golden"):
        assert expected in words
    for expected in ("retriever", "sleeping", "sofa", "toy", "two"):
        assert expected in words
    for dropped in ("the", "on", "a", "dogs"):
        assert dropped not in words
    assert keywords_for([]) == []


def test_search_terms_match_the_stored_keywords() -> None:
    stored = set(keywords_for(["sofa", "motorbike", "person"]))
    terms = search_terms("People on COUCHES beside motorcycles!")
    assert terms == ["person", "couch", "beside", "motorcycle"]
    assert {"person", "couch", "motorcycle"} <= stored
    assert search_terms("the of and") == []
    assert len(search_terms(" ".join(f"w{i}" for i in range(100)))) == MAX_SEARCH_TERMS
    assert search_terms("dog dogs DOG") == ["dog"]


def test_caption_framing_words_are_not_keywords() -> None:
    # The words captions are built around match nearly every record: neither stored nor
    # searched. What the picture shows, its colours and its light are kept.
    words = keywords_for(
        ["dog"],
        [],
        [
            "Two dogs",
            "The photograph shows two dogs, grouped near the centre of the frame. The scene is "
            "evenly exposed, with moderate contrast and a vivid palette of brown and green.",
        ],
    )
    assert words == ["brown", "dog", "green", "two", "vivid"]
    assert search_terms("scene with a dog near the frame") == ["dog"]


@pytest.mark.parametrize(
    ("searched", "stored_as"),
    [
        ("collies", "collie"),  # not colly
        ("potatoes", "mashed potato"),  # not potatoe
        ("trolleybuses", "trolleybus"),
        ("platypuses", "platypus"),
        ("basenjis", "basenji"),  # -is words keep their s when stored
        ("tvs", "tv"),
        ("lenses", "lens"),
        ("puppies", "puppy"),
    ],
)
def test_a_plural_finds_the_singular_that_suffix_rules_miss(searched: str, stored_as: str) -> None:
    stored = set(keywords_for([], [stored_as]))
    (forms,) = search_forms(searched)
    assert stored & set(forms), (searched, forms)


@pytest.mark.parametrize(
    ("searched", "not_stored_as"),
    [("oranges", "orangutan"), ("kites", "kit fox"), ("capes", "cap")],
)
def test_a_plural_finds_no_shorter_word(searched: str, not_stored_as: str) -> None:
    (forms,) = search_forms(searched)
    assert not set(keywords_for([], [not_stored_as])) & set(forms), forms


def test_plural_stop_words_are_stop_words() -> None:
    assert search_terms("photos of scenes") == search_terms("photo of a scene") == []
    assert "photo" not in keywords_for([], [], ["Two photos of dogs"])
    # Function words are not plurals: "cans" stays content.
    assert "can" in keywords_for([], [], ["Three cans of paint"])
    assert search_terms("cans") == ["can"]
