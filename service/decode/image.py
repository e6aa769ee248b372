"""Turn untrusted bytes into an RGB Pillow image, safely.

Only raster formats with well-kept pure decoders are opened (no EPS/PDF, which would run
Ghostscript). The pixel cap is checked from the header before any pixel is decoded, JPEGs
are decoded at a reduced DCT scale when the model needs at most half the resolution, EXIF
orientation is applied, every mode ends up RGB (transparency composited on white), and an
embedded colour profile gives a second, sRGB copy for describing colours.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import (
    AvifImagePlugin,
    Image,
    ImageCms,
    ImageOps,
    JpegImagePlugin,
    UnidentifiedImageError,
    features,
)

from service.errors import PayloadTooLarge, UnprocessableImage, UnsupportedMediaType

# AVIF where Pillow was built with libavif, as its wheels are: photos from CDNs that pick
# the format per client, and from phones.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF") + (
    ("AVIF",) if features.check("avif") else ()
)
# EXIF orientations 5-8 rotate by 90 degrees: stored width and height swap.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
_SRGB = ImageCms.createProfile("sRGB")
_HIGH_BIT_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Pillow keeps a row pointer per row and copies the image a few times on the way to RGB: a
# 1 x 50,000,000 PNG of 97 KB would take 3 GB. JPEG, WebP and GIF cannot be larger anyway.
MAX_SIDE = 65_535
# Each scan of a progressive JPEG walks every block of the image, however little it holds:
# thousands of near-empty scans in a few hundred KB would hold a worker for minutes. Real
# encoders write about 10 (libjpeg's default progression); mozjpeg's stay under 20.
MAX_JPEG_SCANS = 100
# A marker, as libjpeg finds one: the last 0xFF of any fill bytes, then a code that is not 0
# (0xFF 0x00 is a stuffed data byte); whatever lies between segments is skipped, as it skips
# it. One byte pair, no repetition: the search stays linear on any run of 0xFF ("\xff+"
# made it quadratic, holding the GIL).
_MARKER = re.compile(rb"\xff[^\x00\xff]")
_SOS, _EOI = 0xDA, 0xD9
# Markers with no length: RSTn and SOI, and every code below SOF0 (TEM, reserved), which
# libjpeg discards in a scan's data and reads on: a length skipped there could hide scans.
_NO_LENGTH = frozenset({*range(0xC0), *range(0xD0, 0xD9)})
# Colour-profile transforms, by the profile's digest: real profiles recur (a camera's, Adobe
# RGB, Display P3), and a transform takes milliseconds to build.
_TRANSFORMS_KEPT = 32
_MAX_PROFILE_BYTES = 4 << 20  # real ones are a few KB to a few hundred KB
# A profile's tag table: a count after the 128-byte header, then 12 bytes a tag, its
# signature first. LittleCMS reads at most 100 tags (MAX_TABLE_TAG).
_TAG_TABLE = 132
_MAX_TAGS = 100
_FLOAT_PIPELINE_TAGS = frozenset(
    {b"D2B0", b"D2B1", b"D2B2", b"D2B3", b"B2D0", b"B2D1", b"B2D2", b"B2D3"}
)
# decode_image checks the pixel cap itself, against the service's setting; Pillow's own
# guard (89 MP) would refuse images the operator allowed, and warn on stderr below that.
Image.MAX_IMAGE_PIXELS = None
# Brands of an ISOBMFF file type box (the first box of AVIF and HEIF files): AVIF still
# images and sequences; HEVC-coded HEIF (HEIC, as phones save it).
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEVC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
# libavif decodes on as many threads as the process has CPUs, by default; every decode already
# runs on an executor worker sized to the cores.
AvifImagePlugin.DEFAULT_MAX_THREADS = 1


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """``image``: RGB, upright, possibly reduced, its values as stored: what the models were
    trained on (training pipelines ignore colour profiles). ``viewed``: the same pixels as a
    colour-managed viewer shows them (sRGB), for the colours people read about; the same
    object as ``image`` unless another profile is embedded."""

    image: Image.Image
    width: int  # upright width at full resolution
    height: int
    format: str
    viewed: Image.Image

    # Full-resolution pixels per pixel of ``image`` on both axes: the DCT scaling denominator
    # (1, 2, 4 or 8). Not the ratio of the sides: each is rounded up (2049 becomes 257 at 1/8).
    reduction: int = 1


def decode_image(
    data: bytes, *, max_pixels: int, target_size: int | None = None, short_side: int = 0
) -> DecodedImage:
    """Decode ``data``. Draft hints for JPEG: ``target_size`` is the longest side the caller
    needs, ``short_side`` the shortest side; the image is never drafted below either."""
    if not data:
        raise UnsupportedMediaType("the URL returned an empty body", extra={"reason": "empty"})
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        brands = _file_brands(data)
        if brands & _AVIF_BRANDS and "AVIF" in ALLOWED_FORMATS:
            # libavif parses the whole file on opening: a cut one fails there, not in load().
            raise UnprocessableImage(
                "the AVIF image is truncated or corrupt", extra={"reason": "corrupt"}
            ) from None
        if (signed := _signature_format(data)) is not None:
            # Its own signature, but a header Pillow could not read: cut, or damaged.
            raise UnprocessableImage(
                f"the {signed} image's header is truncated or corrupt",
                extra={"reason": "corrupt"},
            ) from None
        if brands & _HEVC_BRANDS:
            raise UnsupportedMediaType(
                "HEIC (HEVC-coded HEIF) images are not read here: send the photo as JPEG or AVIF",
                extra={"reason": "heic"},
            ) from None
        raise UnsupportedMediaType(
            f"the content is not an image in a supported format ({', '.join(ALLOWED_FORMATS)})",
            extra={"reason": "unknown_format"},
        ) from None
    except (
        OSError,
        ValueError,
        SyntaxError,
        OverflowError,  # an offset past 2**63, which no seek can reach
        RuntimeError,  # libavif's
    ) as exc:
        raise UnprocessableImage(
            f"the image header is corrupt: {exc}", extra={"reason": "corrupt"}
        ) from None

    with image:
        stored_w, stored_h = image.size
        if stored_w * stored_h > max_pixels:
            raise _too_many_pixels((stored_w, stored_h), max_pixels)
        if max(stored_w, stored_h) > MAX_SIDE:
            raise PayloadTooLarge(
                f"the image is {stored_w}x{stored_h} pixels; a side may have at most {MAX_SIDE:,}",
                extra={"reason": "too_long_side", "max_side": MAX_SIDE},
            )
        # A JPEG that carries more pictures (an MPF preview, a stereo pair) opens as "MPO":
        # its first picture is the photo, decoded like any JPEG.
        is_jpeg = isinstance(image, JpegImagePlugin.JpegImageFile)
        fmt = "JPEG" if is_jpeg else image.format or "unknown"
        if is_jpeg and image.info.get("progressive") and _scans(data) > MAX_JPEG_SCANS:
            raise UnprocessableImage(
                f"the progressive JPEG has more than {MAX_JPEG_SCANS} scans; real encoders"
                " write about 10",
                extra={"reason": "too_many_scans", "max_scans": MAX_JPEG_SCANS},
            )
        try:
            # Reading EXIF can decode a PNG's data (its eXIf chunk may follow it), so a broken
            # file fails here as well as in load(). Pillow raises TypeError and struct.error
            # on some malformed TIFF tags.
            reduction = 1
            if (target_size or short_side) and is_jpeg:
                reduction = _draft(image, target_size or 0, short_side)
            image.load()
            # Read after load: Pillow's TIFF decoder turns the image upright itself and then
            # drops the tag (its size is upright from the start only for the TIFF tag, not
            # for an orientation in the XMP packet).
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            upright_image = ImageOps.exif_transpose(image)
            if reduction == 1:
                upright = upright_image.size
            else:  # drafted: the size of the stored picture, turned
                swapped = orientation in _SWAPPING_ORIENTATIONS
                upright = (stored_h, stored_w) if swapped else (stored_w, stored_h)
            rgb = _to_rgb(upright_image)
            viewed = _in_srgb(upright_image, rgb)
        except (
            OSError,
            ValueError,
            SyntaxError,
            EOFError,
            TypeError,
            struct.error,
            OverflowError,  # a TIFF strip offset past 2**63, which no seek can reach
            RuntimeError,  # libavif's failures to decode
        ) as exc:
            raise UnprocessableImage(
                f"the {fmt} image is truncated or corrupt: {exc}", extra={"reason": "corrupt"}
            ) from None
    return DecodedImage(
        image=rgb,
        width=upright[0],
        height=upright[1],
        format=fmt,
        viewed=viewed,
        reduction=reduction,
    )


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\xff\xd8\xff", "JPEG"),
)


def _signature_format(data: bytes) -> str | None:
    """The supported format whose signature ``data`` starts with, if any. A BMP's two-letter
    one counts only with its reserved header bytes zero, so that text is not taken for one."""
    for signature, fmt in _SIGNATURES:
        if data.startswith(signature):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and len(data) >= 14 and data[6:10] == bytes(4):
        return "BMP"
    return None


def _file_brands(data: bytes) -> frozenset[bytes]:
    """The major and compatible brands of the ISOBMFF file type box ``data`` starts with; none
    when it does not start with one."""
    if data[4:8] != b"ftyp":
        return frozenset()
    end = min(int.from_bytes(data[:4], "big"), len(data), 4096)
    compatible = (data[offset : offset + 4] for offset in range(16, end - 3, 4))
    return frozenset({data[8:12], *compatible})


def _scans(data: bytes) -> int:
    """How many scans a JPEG holds up to its end (EOI), counted no further than one past
    ``MAX_JPEG_SCANS``. Markers are read as libjpeg reads them: segments (EXIF with its
    thumbnail, ICC profiles, tables between scans) skipped by their lengths, stray bytes
    between them skipped, and in a scan's data 0xFF is a stuffed byte or a marker."""
    scans, position = 0, 2  # after SOI
    while scans <= MAX_JPEG_SCANS and (found := _MARKER.search(data, position)):
        code, position = data[found.start() + 1], found.end()
        if code == _EOI:
            break
        if code in _NO_LENGTH:
            continue
        if code == _SOS:
            scans += 1
        position += int.from_bytes(data[position : position + 2], "big")  # then its data
    return scans


def _draft(image: Image.Image, target_size: int, short_side: int) -> int:
    """Ask for DCT scaling; the reduction obtained (1 for none)."""
    factor = max(target_size / max(image.size), short_side / min(image.size))
    if factor > 0.5:
        return 1  # DCT scaling only pays when it can at least halve the size
    full_width = image.width
    requested = (math.ceil(image.width * factor), math.ceil(image.height * factor))
    drafted = image.draft("RGB", requested)
    return 1 if drafted is None else round(full_width / drafted[1][2])


def _in_srgb(image: Image.Image, rgb: Image.Image) -> Image.Image:
    """``rgb`` (``image`` made RGB) in sRGB when ``image`` embeds another colour profile
    (Adobe RGB, Display P3, a camera's, a CMYK press profile), as a colour-managed viewer
    shows it. A CMYK profile maps the image's own inks; an RGB one the RGB it is composited
    into (a screenshot with alpha, a palette). Profiles that cannot be read, or that do not
    fit the image (a grey one), are ignored."""
    icc = image.info.get("icc_profile")
    if not icc:
        return rgb
    source = image if image.mode == "CMYK" else rgb
    transform = _to_srgb(bytes(icc), source.mode)
    if transform is None:
        return rgb
    try:
        converted = ImageCms.applyTransform(source, transform)
    except ImageCms.PyCMSError:
        return rgb
    return converted if converted is not None else rgb


_transforms: OrderedDict[tuple[bytes, str], ImageCms.ImageCmsTransform | None] = OrderedDict()
_transforms_lock = threading.Lock()


def _to_srgb(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The transform from this profile to sRGB, None when there is nothing to do or the
    profile cannot be read; the last few are kept by digest, never by their bytes."""
    if len(icc) > _MAX_PROFILE_BYTES:
        return None
    key = (hashlib.sha256(icc).digest(), mode)
    with _transforms_lock:
        if key in _transforms:
            _transforms.move_to_end(key)
            return _transforms[key]
    transform = _build_transform(icc, mode)
    with _transforms_lock:
        _transforms[key] = transform
        if len(_transforms) > _TRANSFORMS_KEPT:
            _transforms.popitem(last=False)
    return transform


def _build_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    if _float_pipeline(icc):
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if mode == "RGB" and "srgb" in ImageCms.getProfileDescription(profile).lower():
            return None  # already sRGB (most cameras and phones): nothing to do
        # No per-transform cache: executor threads share the transform.
        return ImageCms.buildTransform(profile, _SRGB, mode, "RGB", flags=ImageCms.Flags.NOCACHE)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def _float_pipeline(icc: bytes) -> bool:
    """Whether the profile has a multiProcessElements tag (an ICC v4 float pipeline): it may
    chain any number of stages, which LittleCMS walks at every point it samples to build a
    transform (8,000 identity matrices in a 20 KB PNG: 3 s of a worker's CPU). No camera,
    phone or editor profile relies on one."""
    if len(icc) < _TAG_TABLE:
        return False
    # LittleCMS refuses a profile of more tags than it reads anyway.
    count = min(int.from_bytes(icc[128:_TAG_TABLE], "big"), _MAX_TAGS)
    end = min(len(icc), _TAG_TABLE + 12 * count)
    return any(
        icc[start : start + 4] in _FLOAT_PIPELINE_TAGS for start in range(_TAG_TABLE, end, 12)
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "1" and "transparency" in image.info:
        # A 1-bit PNG's colour key holds a bit (0 or 1): as grey, the same pixels are 0 or 255.
        key = image.info["transparency"]
        image = image.convert("L")
        image.info["transparency"] = 255 if key else 0
    # A palette, or a PNG's colour key (tRNS) on grey or RGB, marks transparency too.
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in _HIGH_BIT_DEPTH:
        values = np.asarray(image)
        grey = _grey8(values)
        key = image.info.get("transparency")  # a 16-bit PNG's colour key, in 16-bit levels
        if isinstance(key, int):
            grey[values == key] = 255  # on white, as the 8-bit modes above
        image = Image.fromarray(grey, "L")
    return image.convert("RGB")


def _grey8(values: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """High-bit-depth greyscale as 8 bits: integers as 16-bit levels (what 16-bit PNG and
    TIFF hold), floats as 0-1 or 0-255 levels by their range."""
    if values.dtype.kind == "f":
        finite = values[np.isfinite(values)]
        top = float(finite.max()) if finite.size else 0.0
        scale = 255.0 if top <= 1.0 else 1.0 if top <= 255.0 else 255.0 / top
        levels = np.clip(np.nan_to_num(values.astype(np.float32) * scale), 0, 255).round()
    else:
        levels = np.clip(values, 0, 65535) >> 8
    return np.asarray(levels, dtype=np.uint8)


def _too_many_pixels(size: tuple[int, int], max_pixels: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the image has {size[0]}x{size[1]} pixels; the limit is {max_pixels:,} pixels",
        extra={"reason": "too_many_pixels", "max_pixels": max_pixels},
    )
