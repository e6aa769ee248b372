"""EfficientNet-Lite0 tagger: pre-processing, top-k selection and the real model on photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest

from service.infer.manifest import ModelError, read_lines
from service.infer.tagger import (
    EfficientNetTagger,
    load_tagger,
    parse_class_names,
    preprocess,
    softmax,
    top_tags,
)

CAT_LEMMAS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "lynx"}


class FakeSession:
    input_name = "input"
    input_shape: tuple[int | str, ...] = (1, 3, 224, 224)
    provider = "FakeExecutionProvider"

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits
        self.feeds: list[np.ndarray] = []

    def run(self, feeds: object) -> list[np.ndarray]:
        assert isinstance(feeds, dict)
        self.feeds.append(feeds[self.input_name])
        return [self.logits]


class TestPreprocess:
    def test_shape_dtype_and_channel_order(self) -> None:
        tensor = preprocess(PIL.Image.new("RGB", (640, 480), (255, 127, 0)))
        assert tensor.shape == (1, 3, 224, 224)
        assert tensor.dtype == np.uint8  # (x - 127) / 128 runs inside the graph (PIXELS)
        assert tensor.flags["C_CONTIGUOUS"]
        # RGB order
        assert (tensor[0, 0] == 255).all()
        assert (tensor[0, 1] == 127).all()
        assert (tensor[0, 2] == 0).all()

    def test_short_side_256_then_centre_crop(self) -> None:
        # 512x256: the short side is already 256, so the crop keeps columns 144..367.
        pixels = np.zeros((256, 512, 3), dtype=np.uint8)
        pixels[:, 256:] = 255
        tensor = preprocess(PIL.Image.fromarray(pixels))
        row = tensor[0, 0, 100]
        assert (row[:112] == 0).all()
        assert (row[112:] == 255).all()

    def test_tall_and_small_images(self) -> None:
        tall = PIL.Image.new("RGB", (100, 900), (10, 20, 30))
        small = PIL.Image.new("RGB", (20, 30), (10, 20, 30))
        for image in (tall, small):
            tensor = preprocess(image)
            assert tensor.shape == (1, 3, 224, 224)
            assert np.allclose(tensor[0, 0], 10, atol=1)

    def test_long_thin_image_resamples_only_the_crop(self) -> None:
        # Scaled whole, 1 x 100000 pixels (a 475-byte PNG) would be 256 x 25.6 million.
        line = PIL.Image.new("RGB", (1, 100_000), (10, 20, 30))
        line.paste((200, 200, 200), (0, 0, 1, 1_000))
        tensor = preprocess(line)
        assert tensor.shape == (1, 3, 224, 224)
        assert set(np.unique(tensor[0, 0])) == {10}  # the central square, far from the change

    def test_greyscale_is_converted(self) -> None:
        tensor = preprocess(PIL.Image.new("L", (300, 300), 127))
        assert (tensor == 127).all()


def test_parse_class_names_takes_the_first_lemma() -> None:
    lines = ["n02123045\ttabby, tabby cat", "n07753592\tbanana"]
    assert parse_class_names(lines) == ["tabby", "banana"]
    with pytest.raises(ModelError, match="line 2"):
        parse_class_names(["n1\tok", "no tab here"])


def test_softmax_and_top_tags() -> None:
    probs = softmax(np.log(np.array([0.1, 0.6, 0.04, 0.26])))
    assert probs.sum() == pytest.approx(1.0)
    names = ["a", "b", "c", "d"]
    tags = top_tags(probs, names, top_k=3, min_conf=0.05)
    assert [t.name for t in tags] == ["b", "d", "a"]
    assert [t.conf for t in tags] == pytest.approx([0.6, 0.26, 0.1])
    assert [t.name for t in top_tags(probs, names, top_k=5, min_conf=0.2)] == ["b", "d"]
    assert top_tags(probs, names, top_k=0, min_conf=0.0) == []
    with pytest.raises(ModelError):
        top_tags(probs, names[:3], top_k=1, min_conf=0.0)


def test_tagger_with_a_fake_session() -> None:
    logits = np.full((1, 4), -10.0, dtype=np.float32)
    logits[0, 2] = 5.0
    session = FakeSession(logits)
    tagger = EfficientNetTagger(session, ["a", "b", "c", "d"])
    [tag] = tagger.tag(PIL.Image.new("RGB", (50, 40)))
    assert tag.name == "c" and tag.conf > 0.99
    assert session.feeds[0].shape == (1, 3, 224, 224)
    assert tagger.name == "efficientnet_lite0"
    assert len(tagger.sha256) == 64 and tagger.version == tagger.sha256[:12]
    assert tagger.provider == "FakeExecutionProvider"


def test_tagger_refuses_a_wrong_input_shape() -> None:
    session = FakeSession(np.zeros((1, 4), dtype=np.float32))
    session.input_shape = (1, 3, 256, 256)
    with pytest.raises(ModelError, match="224"):
        EfficientNetTagger(session, ["a", "b", "c", "d"])


@pytest.fixture(scope="module")
def tagger(model_dir: Path) -> EfficientNetTagger:
    return load_tagger(model_dir, provider="cpu", intra_op_threads=1)


def _photo(evalset_dir: Path, name: str) -> PIL.Image.Image:
    with PIL.Image.open(evalset_dir / "images" / name) as image:
        return PIL.ImageOps.exif_transpose(image).convert("RGB")


def test_real_model_tags_a_cat_as_a_cat(tagger: EfficientNetTagger, evalset_dir: Path) -> None:
    tags = tagger.tag(_photo(evalset_dir, "000000555705.jpg"))
    assert 1 <= len(tags) <= 5
    assert {t.name for t in tags} & CAT_LEMMAS
    assert all(t.conf >= 0.05 for t in tags)
    assert [t.conf for t in tags] == sorted((t.conf for t in tags), reverse=True)
    assert len(tagger.class_names) == 1000


@pytest.mark.parametrize(
    ("photo", "expected"),
    [("000000407574.jpg", "banana"), ("000000244592.jpg", "zebra")],
)
def test_real_model_top_tag(
    tagger: EfficientNetTagger, evalset_dir: Path, photo: str, expected: str
) -> None:
    [top, *_] = tagger.tag(_photo(evalset_dir, photo), top_k=1)
    assert top.name == expected
    assert top.conf > 0.8


def test_classes_sharing_a_name_are_one_tag() -> None:
    """ImageNet's two "crane"s (a bird, a machine): one tag, with either's probability."""
    probs = np.array([0.3, 0.25, 0.05, 0.4])
    tags = top_tags(probs, ["crane", "kite", "crane", "dog"], top_k=5, min_conf=0.0)
    assert [(t.name, t.conf) for t in tags] == [("dog", 0.4), ("crane", 0.35), ("kite", 0.25)]


def test_the_shipped_class_list_yields_distinct_tags(model_dir: Path) -> None:
    names = parse_class_names(read_lines(model_dir / "imagenet_classes.txt"))
    tags = top_tags(np.full(len(names), 1 / len(names)), names, top_k=1000, min_conf=0.0)
    assert len({t.name for t in tags}) == len(tags) == len(set(names))
