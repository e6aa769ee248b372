"""The label-quality estimate: agreement geometry, per-box quality, the image score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.quality import stratified_folds
from bench.quality_runs import match_image
from service.describe.properties import ImageProperties
from service.infer.manifest import read_lines
from service.infer.tagger import Tag, parse_class_names
from service.infer.yolox import Detection
from service.score import quality
from service.score.agreement import agreement_scores, similarity_matrix, softmin_pool
from service.score.quality import (
    WITH_SECOND,
    WITHOUT_SECOND,
    box_quality,
    estimate,
    expected_f1,
    log_area_share,
    miss_candidates,
    miss_features,
    sub_threshold,
    unclaimed_below,
    unflip,
    unmatched_second,
)
from service.score.tags import TAG_TO_COCO, tag_consistency

SIZE = (640, 480)
CAT, DOG, PERSON = 15, 16, 0


def det(class_id: int, conf: float, x1: float, y1: float, x2: float, y2: float) -> Detection:
    names = {CAT: "cat", DOG: "dog", PERSON: "person"}
    return Detection(class_id, names.get(class_id, f"c{class_id}"), conf, x1, y1, x2, y2)


def props(**overrides: float) -> ImageProperties:
    values = {"brightness": 0.5, "contrast": 0.2, "sharpness": 500.0, "colorfulness": 40.0}
    values.update(overrides)
    return ImageProperties(width=640, height=480, dominant_colors=[], phash="0" * 16, **values)


CAT_BOX = det(CAT, 0.9, 100, 100, 300, 300)
PERSON_BOX = det(PERSON, 0.8, 400, 50, 500, 400)


class TestGeometry:
    def test_similarity(self) -> None:
        sim = similarity_matrix([CAT_BOX], [CAT_BOX, PERSON_BOX], SIZE)
        assert sim.shape == (1, 2)
        assert sim[0, 0] == pytest.approx(1.0)
        assert 0.0 < sim[0, 1] < 1e-6  # no overlap, centres ~200 px apart

    def test_similarity_is_scale_free(self) -> None:
        a = det(CAT, 0.9, 100, 100, 300, 300)
        b = det(CAT, 0.9, 110, 100, 310, 300)
        small = similarity_matrix([a], [b], SIZE)
        doubled = [det(CAT, 0.9, *(2 * v for v in (d.x1, d.y1, d.x2, d.y2))) for d in (a, b)]
        large = similarity_matrix(doubled[:1], doubled[1:], (1280, 960))
        assert small[0, 0] == pytest.approx(large[0, 0])

    def test_empty_sides(self) -> None:
        assert similarity_matrix([], [CAT_BOX], SIZE).shape == (0, 1)
        assert similarity_matrix([CAT_BOX], [], SIZE).shape == (1, 0)

    def test_softmin_pool(self) -> None:
        assert softmin_pool([]) == 1.0
        assert softmin_pool([0.7, 0.7]) == pytest.approx(0.7)
        assert softmin_pool([0.1, 0.9]) == pytest.approx(0.1, abs=0.01)
        assert softmin_pool([float("nan"), 0.5]) == pytest.approx(0.5)

    def test_unflip_round_trip(self) -> None:
        [flipped] = unflip([CAT_BOX], 640)
        assert (flipped.x1, flipped.x2) == (340, 540)
        assert unflip(unflip([CAT_BOX], 640), 640) == [CAT_BOX]


class TestAgreement:
    def test_perfect_agreement(self) -> None:
        scores = agreement_scores(
            [CAT_BOX, PERSON_BOX], [CAT_BOX, PERSON_BOX], SIZE, min_similarity=1e-6
        )
        assert scores["agreement"] == pytest.approx(1.0)

    def test_overlooked_swapped_and_badly_located(self) -> None:
        overlooked = agreement_scores([CAT_BOX], [CAT_BOX, PERSON_BOX], SIZE, min_similarity=1e-3)
        assert overlooked["overlooked"] < 0.01
        swapped = agreement_scores(
            [CAT_BOX], [det(DOG, 0.9, 100, 100, 300, 300)], SIZE, min_similarity=1e-3
        )
        assert swapped["swapped"] < 0.01
        shifted = agreement_scores(
            [CAT_BOX], [det(CAT, 0.9, 180, 100, 380, 300)], SIZE, min_similarity=1e-3
        )
        assert 0.3 < shifted["badly_located"] < 0.7


class TestBoxQuality:
    def test_confirmed_boxes_score_higher_and_confidence_counts(self) -> None:
        weak = det(CAT, 0.4, 100, 100, 300, 300)
        confirmed, unconfirmed = box_quality(
            [weak, PERSON_BOX], [det(CAT, 0.6, 105, 100, 300, 300)]
        )
        assert confirmed > box_quality([weak], [])[0]
        assert unconfirmed == box_quality([PERSON_BOX], [])[0]
        [low, high] = box_quality([weak, CAT_BOX], None)
        assert 0.0 < low < high < 1.0
        assert box_quality([], [CAT_BOX]) == []

    def test_second_opinion_below_its_floor_is_ignored(self) -> None:
        faint = det(CAT, quality.SECOND_MIN_CONF / 2, 100, 100, 300, 300)
        assert box_quality([CAT_BOX], [faint]) == box_quality([CAT_BOX], [])
        assert unmatched_second([], [faint]) == []

    def test_unmatched_second_is_class_aware(self) -> None:
        dog_on_cat = det(DOG, 0.5, 100, 100, 300, 300)
        assert unmatched_second([CAT_BOX], [CAT_BOX, dog_on_cat]) == [dog_on_cat]


class TestMissCandidates:
    def test_sub_threshold_band(self) -> None:
        found = [det(CAT, c, 0, 0, 10, 10) for c in (0.05, 0.1, 0.2, 0.25, 0.9)]
        assert [d.conf for d in sub_threshold(found)] == [0.1, 0.2]

    def test_unclaimed_below_is_class_aware(self) -> None:
        cat_again = det(CAT, 0.2, 102, 100, 300, 300)  # the kept cat, found twice
        dog_on_cat = det(DOG, 0.2, 100, 100, 300, 300)
        far_cat = det(CAT, 0.2, 400, 300, 450, 350)
        below = [cat_again, dog_on_cat, far_cat, CAT_BOX]  # CAT_BOX is kept, not below
        assert unclaimed_below([CAT_BOX], below) == [dog_on_cat, far_cat]

    def test_candidates_come_from_the_second_opinion_when_there_is_one(self) -> None:
        person = det(PERSON, 0.5, 400, 50, 500, 400)
        faint_dog = det(DOG, 0.2, 0, 0, 50, 50)
        assert miss_candidates([CAT_BOX], [CAT_BOX, person], [faint_dog]) == [person]
        assert miss_candidates([CAT_BOX], None, [faint_dog]) == [faint_dog]

    def test_log_area_share(self) -> None:
        whole = det(CAT, 0.9, 0, 0, 640, 480)
        quarter = det(CAT, 0.9, 0, 0, 320, 240)
        point = det(CAT, 0.9, 5, 5, 5.01, 5.01)
        shares = log_area_share([whole, quarter, point], SIZE)
        assert shares[:2] == pytest.approx([0.0, np.log(0.25)])
        assert shares[2] == pytest.approx(np.log(quality.MIN_AREA_FRACTION))
        assert log_area_share([], SIZE).shape == (0,)

    def test_miss_features(self) -> None:
        person = det(PERSON, 0.5, 400, 50, 500, 400)
        echo = det(PERSON, 0.2, 402, 50, 500, 400)  # the detector saw it too, below threshold
        x = miss_features([CAT_BOX], [person], [echo], SIZE)
        assert x.shape == (1, 3)
        assert x[0] == pytest.approx([np.log(0.5), np.log(100 * 350 / (640 * 480)), 0.2])
        assert miss_features([CAT_BOX], [person], [], SIZE)[0, 2] == 0.0
        assert miss_features([CAT_BOX], None, [echo], SIZE).shape == (1, 2)
        assert miss_features([], [], [], SIZE).shape == (0, 3)


class TestEstimate:
    def test_agreement_scores_higher_than_disagreement(self) -> None:
        agree = estimate([CAT_BOX, PERSON_BOX], [CAT_BOX, PERSON_BOX], None, None, SIZE, below=[])
        missed = [det(PERSON, 0.7, x, 300, x + 40, 420) for x in range(0, 600, 60)]
        # the detector saw the same people, below the kept threshold
        echoes = [det(PERSON, 0.15, x, 300, x + 40, 420) for x in range(0, 600, 60)]
        second = [det(DOG, 0.8, 100, 100, 300, 300), *missed]
        disagree = estimate([CAT_BOX], second, None, None, SIZE, below=echoes)
        assert 0.0 <= disagree.score < 0.3 < 0.7 < agree.score <= 1.0
        assert len(agree.box_quality) == 2
        assert disagree.components["expected_missed"] > 3

    def test_sub_threshold_confirmation_raises_the_missed_estimate(self) -> None:
        person = det(PERSON, 0.3, 400, 50, 500, 400)
        echo = det(PERSON, 0.2, 402, 50, 500, 400)
        other_class = det(DOG, 0.2, 402, 50, 500, 400)
        alone = estimate([CAT_BOX], [CAT_BOX, person], None, None, SIZE, below=[])
        confirmed = estimate([CAT_BOX], [CAT_BOX, person], None, None, SIZE, below=[echo])
        unrelated = estimate([CAT_BOX], [CAT_BOX, person], None, None, SIZE, below=[other_class])
        assert confirmed.components["expected_missed"] > alone.components["expected_missed"]
        assert confirmed.score < alone.score
        assert unrelated.score == alone.score
        assert (confirmed.components["confirmed_missed"], alone.components["confirmed_missed"]) == (
            1.0,
            0.0,
        )
        assert confirmed.components["sub_threshold_count"] == 1.0
        # kept boxes (and boxes below SUB_MIN_CONF) passed in ``below`` are not evidence
        assert estimate([CAT_BOX], [CAT_BOX, person], None, None, SIZE, below=[CAT_BOX]) == alone

    def test_no_detections(self) -> None:
        nothing = estimate([], [], None, None, SIZE, below=[])
        person = det(PERSON, 0.9, 0, 0, 100, 200)
        echo = det(PERSON, 0.2, 0, 0, 100, 200)
        unconfirmed = estimate([], [person], None, None, SIZE, below=[])
        overlooked = estimate([], [person], None, None, SIZE, below=[echo])
        assert nothing.score > 0.8  # both empty: right
        assert overlooked.score < 0.5 < unconfirmed.score < nothing.score
        assert nothing.box_quality == []
        # without a second opinion, the sub-threshold boxes are the only evidence
        empty = estimate([], None, None, None, SIZE, below=[])
        faint = estimate([], None, None, None, SIZE, below=[det(PERSON, 0.2, 0, 0, 100, 200)])
        assert empty.components["expected_f1"] == 1.0
        assert faint.components["expected_f1"] < 1.0
        assert empty.components["expected_precision"] == faint.components["expected_precision"]
        assert faint.components["expected_precision"] == 1.0  # nothing claimed, nothing wrong
        assert faint.score < empty.score

    def test_without_a_second_opinion_uses_the_fallback(self) -> None:
        result = estimate([CAT_BOX], None, None, None, SIZE, below=[])
        assert 0.0 < result.score < 1.0
        assert "agreement" not in result.components
        assert result.box_quality == box_quality([CAT_BOX], None, model=WITHOUT_SECOND)
        forced = estimate([CAT_BOX], [CAT_BOX], None, None, SIZE, below=[], model=WITHOUT_SECOND)
        assert forced.score == result.score
        faint_dogs = [det(DOG, 0.2, x, 400, x + 50, 450) for x in range(0, 600, 100)]
        missed = estimate([CAT_BOX], None, None, None, SIZE, below=faint_dogs)
        assert missed.components["expected_missed"] > 1.0
        assert missed.score < result.score

    def test_components(self) -> None:
        tags = [Tag("tabby", 0.6), Tag("golden retriever", 0.2), Tag("laptop", 0.1)]
        result = estimate([CAT_BOX, PERSON_BOX], [CAT_BOX], tags, props(), SIZE, below=[])
        c = result.components
        for key in (
            "expected_f1",
            "expected_precision",
            "expected_missed",
            "sub_threshold_count",
            "confirmed_missed",
            "mean_conf",
            "min_conf",
            "ambiguous_share",
            "count",
            "overlooked",
            "badly_located",
            "swapped",
            "agreement",
            "tag_support",
            "tag_missing",
            "sharpness",
            "exposure",
            "resolution",
        ):
            assert key in c
            assert np.isfinite(c[key])
        assert (c["count"], c["mean_conf"], c["min_conf"]) == (2.0, 0.85, 0.8)
        assert (c["tag_support"], c["tag_missing"]) == (0.6, 0.2)
        # tags and image properties are reported, not scored
        assert (
            result.score
            == estimate([CAT_BOX, PERSON_BOX], [CAT_BOX], None, None, SIZE, below=[]).score
        )

    def test_image_quality_components(self) -> None:
        dark = estimate(
            [CAT_BOX], None, None, props(brightness=0.05, sharpness=5.0), SIZE, below=[]
        )
        good = estimate([CAT_BOX], None, None, props(), SIZE, below=[])
        assert dark.components["exposure"] < good.components["exposure"]
        assert dark.components["sharpness"] < good.components["sharpness"]


def test_expected_f1() -> None:
    assert expected_f1([1.0, 1.0], np.zeros(0), n_kept=2) == 1.0
    assert expected_f1([1.0], np.array([1.0]), n_kept=1) == pytest.approx(2 / 3)
    assert expected_f1([], np.array([0.5, 0.5]), n_kept=0) == 0.25
    assert expected_f1([], np.zeros(0), n_kept=0) == 1.0


def test_ambiguous_band() -> None:
    boxes = [det(CAT, c, 10 * i, 0, 10 * i + 5, 5) for i, c in enumerate((0.3, 0.45, 0.5, 0.9))]
    assert estimate(boxes, None, None, None, SIZE, below=[]).components["ambiguous_share"] == 0.5


def test_tag_consistency_ignores_unmapped_lemmas() -> None:
    assert tag_consistency([CAT_BOX], [Tag("street sign", 0.9)]) == {
        "tag_support": 0.0,
        "tag_missing": 0.9,
    }
    assert tag_consistency([CAT_BOX], [Tag("volcano", 0.9)]) == {
        "tag_support": 0.0,
        "tag_missing": 0.0,
    }


def test_tag_map_names_real_lemmas_and_classes(model_dir: Path) -> None:
    lemmas = set(parse_class_names(read_lines(model_dir / "imagenet_classes.txt")))
    coco = set(read_lines(model_dir / "coco_classes.txt"))
    assert set(TAG_TO_COCO) <= lemmas
    assert set(TAG_TO_COCO.values()) <= coco
    assert "crane" not in TAG_TO_COCO  # a bird and a machine share this lemma


def test_shipped_models_are_sane() -> None:
    assert WITH_SECOND.uses_second and not WITHOUT_SECOND.uses_second
    assert len(WITH_SECOND.box_coef) == 2 and len(WITHOUT_SECOND.box_coef) == 1
    assert len(WITH_SECOND.miss_coef) == 3 and len(WITHOUT_SECOND.miss_coef) == 2
    assert WITH_SECOND.slope > 0 and WITHOUT_SECOND.slope > 0
    assert all(c > 0 for c in WITH_SECOND.box_coef + WITHOUT_SECOND.box_coef)
    # more confident candidates, and candidates the detector saw too, are likelier misses
    assert WITH_SECOND.miss_coef[0] > 0 and WITHOUT_SECOND.miss_coef[0] > 0
    assert WITH_SECOND.miss_coef[2] > 0


class TestTruthMatching:
    """The bench's definition of "right" (per-image F1 >= 0.5 at IoU 0.5)."""

    def test_class_aware_greedy_matching(self) -> None:
        truth = [("cat", (100.0, 100.0, 300.0, 300.0), False), ("dog", (0, 0, 50, 50), False)]
        p, r, f1, flags, missed = match_image([CAT_BOX, det(CAT, 0.5, 100, 100, 290, 300)], truth)
        assert (p, r, f1) == (0.5, 0.5, 0.5)
        assert flags == [True, False]
        assert missed == [("dog", (0, 0, 50, 50))]

    def test_yolox_spellings_and_crowds(self) -> None:
        tv = Detection(62, "tvmonitor", 0.9, 0, 0, 100, 100)
        crowd = [("tv", (0.0, 0.0, 100.0, 100.0), True)]
        assert match_image([tv], crowd)[:3] == (1.0, 1.0, 1.0)  # ignored: nothing claimed
        assert match_image([tv], [("tv", (0.0, 0.0, 100.0, 100.0), False)])[2] == 1.0

    def test_empty_images(self) -> None:
        assert match_image([], [])[:3] == (1.0, 1.0, 1.0)
        assert match_image([], [("cat", (0.0, 0.0, 9.0, 9.0), False)])[2] == 0.0
        assert match_image([CAT_BOX], [])[2] == 0.0


def test_stratified_folds_deal_right_and_wrong_images_evenly() -> None:
    right = np.array([True] * 41 + [False] * 23)
    fold = stratified_folds(right, 5, np.random.default_rng(0))
    for k in range(5):
        assert int(np.sum(right & (fold == k))) in (8, 9)
        assert int(np.sum(~right & (fold == k))) in (4, 5)
