"""Image properties: colours, exposure, sharpness, colourfulness and the perceptual hash."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import msgspec
import numpy as np
import PIL.Image
import PIL.ImageFilter
import PIL.ImageOps
import pytest

from service.describe.properties import (
    ImageProperties,
    _dct_matrix,
    dominant_colors,
    image_properties,
    phash,
)
from service.query.similar import hamming

PHOTOS = ["000000555705.jpg", "000000244592.jpg", "000000286994.jpg", "000000407574.jpg"]


def _photo(evalset_dir: Path, name: str) -> PIL.Image.Image:
    with PIL.Image.open(evalset_dir / "images" / name) as image:
        return PIL.ImageOps.exif_transpose(image).convert("RGB")


def test_colour_fractions_never_add_up_to_more_than_the_image(evalset_dir: Path) -> None:
    for path in sorted((evalset_dir / "images").glob("*.jpg"))[:40]:
        with PIL.Image.open(path) as image:
            colours = dominant_colors(image.convert("RGB"))
        assert 0.995 <= sum(c.fraction for c in colours) <= 1.0, path.name


def _recompress(image: PIL.Image.Image, quality: int, scale: float = 1.0) -> PIL.Image.Image:
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with PIL.Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _halves(left: tuple[int, int, int], right: tuple[int, int, int]) -> PIL.Image.Image:
    pixels = np.zeros((120, 160, 3), dtype=np.uint8)
    pixels[:, :80] = left
    pixels[:, 80:] = right
    return PIL.Image.fromarray(pixels)


def test_exposure_and_contrast() -> None:
    black = image_properties(PIL.Image.new("RGB", (64, 48), (0, 0, 0)))
    white = image_properties(PIL.Image.new("RGB", (64, 48), (255, 255, 255)))
    split = image_properties(_halves((0, 0, 0), (255, 255, 255)))
    assert (black.brightness, white.brightness) == (0.0, 1.0)
    assert black.contrast == 0.0 and black.sharpness == 0.0
    assert split.brightness == pytest.approx(0.5, abs=0.01)
    assert split.contrast == pytest.approx(0.5, abs=0.01)
    assert (split.width, split.height) == (160, 120)


def test_colourfulness() -> None:
    grey = image_properties(PIL.Image.new("RGB", (64, 48), (128, 128, 128)))
    vivid = image_properties(_halves((255, 0, 0), (0, 0, 255)))
    assert grey.colorfulness == 0.0
    assert vivid.colorfulness > 100


def test_dominant_colours(evalset_dir: Path) -> None:
    colours = dominant_colors(_halves((255, 0, 0), (0, 0, 255)))
    assert {c.hex for c in colours[:2]} == {"#ff0000", "#0000ff"}
    assert min(c.fraction for c in colours[:2]) > 0.4
    assert sum(c.fraction for c in colours) == pytest.approx(1.0, abs=1e-3)
    photo = _photo(evalset_dir, PHOTOS[0])
    assert len(dominant_colors(photo)) == 5
    assert image_properties(photo).dominant_colors == dominant_colors(photo)


def test_blurred_photo_is_less_sharp(evalset_dir: Path) -> None:
    image = _photo(evalset_dir, PHOTOS[0])
    sharp = image_properties(image).sharpness
    blurred = image_properties(image.filter(PIL.ImageFilter.GaussianBlur(3))).sharpness
    assert blurred < sharp / 5


def test_greyscale_input_and_struct_encodes(evalset_dir: Path) -> None:
    props = image_properties(_photo(evalset_dir, PHOTOS[1]).convert("L"))
    assert props.colorfulness == 0.0
    decoded = msgspec.json.decode(msgspec.json.encode(props), type=ImageProperties)
    assert decoded == props


def test_dct_matrix_is_orthonormal() -> None:
    dct = _dct_matrix(32)
    assert np.allclose(dct @ dct.T, np.eye(32), atol=1e-10)


def test_phash_format_and_flat_image() -> None:
    value = phash(PIL.Image.new("RGB", (40, 30), (90, 90, 90)))
    assert len(value) == 16 and int(value, 16) >= 0
    assert hamming("ffff000000000000", "0fff000000000001") == 5


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (100, 100, 100), (105, 90, 7)])
def test_featureless_images_share_one_hash(colour: tuple[int, int, int]) -> None:
    """Their DCT holds only rounding noise, which used to set bits at random (black and
    white 29 bits apart): they are one another's near-duplicates."""
    assert phash(PIL.Image.new("RGB", (640, 480), colour)) == "0000000000000000"


def test_phash_matches_between_entry_points(evalset_dir: Path) -> None:
    image = _photo(evalset_dir, PHOTOS[2])
    assert phash(image) == image_properties(image).phash


def test_near_duplicates_are_close_and_different_photos_far(evalset_dir: Path) -> None:
    images = [_photo(evalset_dir, name) for name in PHOTOS]
    hashes = [phash(image) for image in images]
    for image, value in zip(images, hashes, strict=True):
        assert hamming(value, phash(_recompress(image, 30))) <= 6
        assert hamming(value, phash(_recompress(image, 60, scale=0.5))) <= 6
        assert hamming(value, phash(image.resize((image.width * 2, image.height * 2)))) <= 6
    for a, b in itertools.combinations(hashes, 2):
        assert hamming(a, b) > 20
