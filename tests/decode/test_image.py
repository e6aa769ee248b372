"""Decoding untrusted bytes: orientation, modes, caps, broken files, draft scaling."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, TiffImagePlugin, TiffTags

from service.analysis import to_boxes
from service.decode import image as image_module
from service.decode.image import decode_image
from service.errors import PayloadTooLarge, UnprocessableImage, UnsupportedMediaType
from service.infer.yolox import Detection
from tests.support.images import encode, png_bomb

CAP = 50_000_000


def gradient(width: int, height: int) -> Image.Image:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image.paste((255, 0, 0), (0, 0, 16, 16))  # a red top-left marker
    return image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "AVIF"])
def test_exif_orientation_is_applied(fmt: str) -> None:
    """Pillow turns a TIFF upright itself while decoding, the others are turned here: the
    size is the upright one either way, once. (AVIF stores the turn in its own boxes, which
    Pillow reads back as the EXIF orientation.)"""
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90-degree clockwise turn
    options = {"quality": 95} if fmt in ("JPEG", "WEBP", "AVIF") else {}
    data = encode(gradient(300, 200), fmt, exif=exif, **options)
    decoded = decode_image(data, max_pixels=CAP)
    assert (decoded.width, decoded.height) == (200, 300)
    assert decoded.image.size == (200, 300)
    red, green, blue = decoded.image.getpixel((195, 4))  # type: ignore[misc]
    assert red > 150 and green < 100 and blue < 100  # the marker moved to the top-right


XMP_ORIENTATION_6 = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF'
    b' xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description'
    b' xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


def test_a_tiff_turned_by_its_xmp_packet_alone_has_the_upright_size() -> None:
    """An orientation only in the XMP packet (no TIFF tag): Pillow turns the pixels while
    loading them but reported the stored size before, so the record's width and height were
    swapped against the image the models saw."""
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[700] = XMP_ORIENTATION_6
    info.tagtype[700] = TiffTags.BYTE
    data = encode(gradient(300, 200), "TIFF", tiffinfo=info)
    decoded = decode_image(data, max_pixels=CAP)
    assert (decoded.width, decoded.height) == decoded.image.size == (200, 300)
    red, green, blue = decoded.image.getpixel((195, 4))  # type: ignore[misc]
    assert red > 150 and green < 100 and blue < 100


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I;16" else "PNG"
    data = encode(gradient(64, 48).convert(mode), fmt)
    decoded = decode_image(data, max_pixels=CAP)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (64, 48)


@pytest.mark.parametrize(
    ("mode", "levels"),
    [("I;16", 65535), ("I;16B", 65535), ("I", 65535), ("F", 1.0), ("F", 255.0)],
)
def test_high_bit_depth_greyscale_keeps_its_levels(mode: str, levels: float) -> None:
    """A mid-grey stays mid-grey whatever the sample type and byte order."""
    ramp = np.linspace(0, levels, 64 * 48).reshape(48, 64)
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4", "F": "<f4"}[mode]
    image = Image.frombytes(mode, (64, 48), ramp.astype(dtype).tobytes())
    decoded = decode_image(encode(image, "TIFF"), max_pixels=CAP)
    grey = np.asarray(decoded.image)
    assert abs(float(grey.mean()) - 127.5) < 2
    assert grey.min() <= 1 and grey.max() >= 254


def test_an_embedded_colour_profile_is_converted_to_srgb(evalset_dir: Path) -> None:
    """A photo tagged Adobe RGB (1998): the models get its values as stored (as in their
    training), the colour description the photo as a colour-managed viewer shows it."""
    data = (evalset_dir / "images" / "000000269196.jpg").read_bytes()
    raw = Image.open(io.BytesIO(data))
    embedded = ImageCms.ImageCmsProfile(io.BytesIO(raw.info["icc_profile"]))
    assert "Adobe RGB" in ImageCms.getProfileDescription(embedded)
    shown = ImageCms.profileToProfile(raw, embedded, ImageCms.createProfile("sRGB"))
    assert shown is not None
    decoded = decode_image(data, max_pixels=CAP)
    viewed = np.asarray(decoded.viewed, dtype=float)
    assert np.abs(viewed - np.asarray(shown, dtype=float)).mean() < 0.5
    assert np.abs(viewed - np.asarray(raw, dtype=float)).mean() > 2  # it did change
    assert decoded.image.tobytes() == raw.convert("RGB").tobytes()
    srgb_tagged = encode(
        gradient(64, 48),
        "JPEG",
        icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
    )
    plain = decode_image(srgb_tagged, max_pixels=CAP)
    assert plain.viewed is plain.image  # nothing to convert


def test_a_colour_profile_applies_to_images_with_alpha_or_a_palette(evalset_dir: Path) -> None:
    """The same pixels and Adobe RGB profile as RGB, RGBA or a palette: the same colours."""
    with Image.open(evalset_dir / "images" / "000000269196.jpg") as tagged:
        adobe = bytes(tagged.info["icc_profile"])
        photo = tagged.convert("RGB").resize((64, 48))
    palette = photo.quantize(64)
    as_rgb = decode_image(encode(palette.convert("RGB"), "PNG", icc_profile=adobe), max_pixels=CAP)
    assert as_rgb.viewed.tobytes() != as_rgb.image.tobytes()  # managed
    for image in (palette.convert("RGBA"), palette):
        decoded = decode_image(encode(image, "PNG", icc_profile=adobe), max_pixels=CAP)
        assert decoded.image.tobytes() == as_rgb.image.tobytes()
        assert decoded.viewed.tobytes() == as_rgb.viewed.tobytes(), image.mode
    # A profile of another colour space (Lab) does not fit: ignored, as an unreadable one is.
    grey = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    la = decode_image(encode(photo.convert("LA"), "PNG", icc_profile=grey), max_pixels=CAP)
    assert la.viewed.tobytes() == la.image.tobytes()


def _profile_with_a_float_pipeline(stages: int) -> bytes:
    """An ICC v4 RGB display profile whose D2B0 tag (multiProcessElements) chains ``stages``
    identity matrices."""
    matrix = b"matf" + bytes(4) + struct.pack(">HH12f", 3, 3, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0)
    first = 16 + 8 * stages
    positions = b"".join(
        struct.pack(">II", first + i * len(matrix), len(matrix)) for i in range(stages)
    )
    pipeline = b"mpet" + bytes(4) + struct.pack(">HHI", 3, 3, stages) + positions + matrix * stages
    white = b"XYZ " + bytes(4) + struct.pack(">3i", 63190, 65536, 54061)
    tags = [(b"D2B0", pipeline), (b"wtpt", white)]
    start = 132 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        table += signature + struct.pack(">II", start + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    header = bytearray(128)
    struct.pack_into(
        ">I4s4s4s4s4s",
        header,
        0,
        start + len(body),
        b"lcms",
        bytes([4, 0x30, 0, 0]),
        b"mntr",
        b"RGB ",
        b"XYZ ",
    )
    header[36:40] = b"acsp"
    struct.pack_into(">3i", header, 68, 63190, 65536, 54061)
    return bytes(header) + struct.pack(">I", len(tags)) + table + body


def test_a_profile_with_a_float_pipeline_is_ignored_unbuilt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Building a transform walks every stage of such a pipeline at every point it samples:
    thousands of stages in a few KB would hold a worker for seconds. It is not built."""
    profile = _profile_with_a_float_pipeline(1000)
    assert ImageCms.ImageCmsProfile(io.BytesIO(profile))  # readable: it would be built

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a transform was built")

    monkeypatch.setattr(ImageCms, "buildTransform", refused)
    decoded = decode_image(encode(gradient(32, 32), "PNG", icc_profile=profile), max_pixels=CAP)
    assert decoded.viewed.tobytes() == decoded.image.tobytes()


def test_an_unreadable_colour_profile_is_ignored() -> None:
    plain = encode(gradient(64, 48), "PNG")
    tagged = encode(gradient(64, 48), "PNG", icc_profile=b"not a profile")
    decoded = decode_image(tagged, max_pixels=CAP).image
    assert decoded.tobytes() == decode_image(plain, max_pixels=CAP).image.tobytes()


def test_transparency_is_composited_on_white() -> None:
    data = encode(Image.new("RGBA", (10, 10), (0, 0, 0, 0)), "PNG")
    assert decode_image(data, max_pixels=CAP).image.getpixel((5, 5)) == (255, 255, 255)
    # A colour key (tRNS) on a grey (1-, 8- or 16-bit) or RGB PNG: black is the transparent
    # colour.
    for mode, black in (("1", 0), ("L", 0), ("I;16", 0), ("RGB", (0, 0, 0))):
        keyed = encode(Image.new(mode, (10, 10), black), "PNG", transparency=black)
        assert decode_image(keyed, max_pixels=CAP).image.getpixel((5, 5)) == (255, 255, 255)


def test_pixel_cap_is_checked_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode_image(png_bomb(), max_pixels=CAP)
    with pytest.raises(PayloadTooLarge):
        decode_image(encode(gradient(100, 100), "PNG"), max_pixels=9_999)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", UnsupportedMediaType),
        (b"GIF89 not really", UnsupportedMediaType),
        (b"<html><body>hello</body></html>", UnsupportedMediaType),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", UnsupportedMediaType),  # EPS would run Ghostscript
    ],
)
def test_non_images_are_refused(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_image(data, max_pixels=CAP)


def test_truncated_jpeg_is_unprocessable() -> None:
    data = encode(gradient(400, 300), "JPEG", quality=95)
    with pytest.raises(UnprocessableImage):
        decode_image(data[: len(data) // 2], max_pixels=CAP)


def test_avif_is_decoded_like_the_others() -> None:
    """Transparency on white, the first picture of a sequence, the cap before decoding."""
    decoded = decode_image(encode(gradient(300, 200), "AVIF", quality=90), max_pixels=CAP)
    assert (decoded.format, decoded.image.mode, decoded.image.size) == ("AVIF", "RGB", (300, 200))
    clear = encode(Image.new("RGBA", (64, 48), (255, 0, 0, 0)), "AVIF")
    assert decode_image(clear, max_pixels=CAP).image.getpixel((5, 5)) == (255, 255, 255)
    first, second = gradient(96, 64), Image.new("RGB", (96, 64), (0, 0, 255))
    sequence = encode(first, "AVIF", save_all=True, append_images=[second], duration=100)
    assert Image.open(io.BytesIO(sequence)).n_frames == 2
    shown = decode_image(sequence, max_pixels=CAP).image.getpixel((4, 4))
    assert isinstance(shown, tuple)
    assert shown[0] > 150 and shown[2] < 100  # the first picture's red marker, not blue
    with pytest.raises(PayloadTooLarge):
        decode_image(encode(gradient(300, 200), "AVIF"), max_pixels=59_999)


def _damaged_avifs() -> list[bytes]:
    """Cut short (libavif then fails on opening) and with bytes of its data changed (it
    fails decoding): both raise RuntimeError in Pillow, not the errors other formats raise."""
    data = encode(Image.effect_mandelbrot((320, 240), (-2, -1.5, 1, 1.5), 100), "AVIF")
    changed = bytearray(data)
    for offset in range(len(data) // 2, len(data), 97):
        changed[offset] ^= 0x5A
    return [data[: len(data) // 2], data[:-10], bytes(changed)]


@pytest.mark.parametrize("data", _damaged_avifs(), ids=["half", "tail-cut", "data-changed"])
def test_a_damaged_avif_is_unprocessable(data: bytes) -> None:
    with pytest.raises(UnprocessableImage, match="AVIF image is truncated or corrupt"):
        decode_image(data, max_pixels=CAP)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's, on a cut TIFF directory
@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "TIFF", "WEBP", "JPEG"])
def test_a_header_cut_short_is_a_broken_image_not_another_format(fmt: str) -> None:
    """Cut inside its header, a file still starts with its format's signature: 422 broken,
    as when cut later, rather than 415 'not an image in a supported format'."""
    data = encode(gradient(64, 48), fmt)
    for cut in (16, 24, 40):
        with pytest.raises(UnprocessableImage, match="corrupt") as info:
            decode_image(data[:cut], max_pixels=CAP)
        assert info.value.extra == {"reason": "corrupt"}


def _file_type_box(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\0\0\0\0" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body


@pytest.mark.parametrize(
    "brands", [(b"heic", b"mif1", b"heic"), (b"mif1", b"mif1", b"heic"), (b"heix", b"heix")]
)
def test_an_heic_photo_is_refused_by_name(brands: tuple[bytes, ...]) -> None:
    """As iPhones save photos, under its own brand or HEIF's general one: the client is told
    what the service cannot read and what to send instead, not just 'not an image'."""
    data = _file_type_box(*brands) + bytes(64)
    with pytest.raises(UnsupportedMediaType, match=r"HEIC .* send the photo as JPEG or AVIF"):
        decode_image(data, max_pixels=CAP)


def test_a_damaged_avif_under_heifs_general_brand_is_still_called_avif() -> None:
    data = _file_type_box(b"mif1", b"mif1", b"avif") + bytes(64)
    with pytest.raises(UnprocessableImage, match="AVIF image is truncated or corrupt"):
        decode_image(data, max_pixels=CAP)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _tiff_with_strip_offsets_typed_double() -> bytes:
    data = bytearray(encode(gradient(48, 40), "TIFF"))
    assert data[:2] == b"II"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (entries,) = struct.unpack_from("<H", data, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * entries, 12):
        if struct.unpack_from("<H", data, entry)[0] == 273:  # StripOffsets
            struct.pack_into("<H", data, entry + 2, 12)  # LONG -> DOUBLE
    return bytes(data)


def _tiff_with_a_strip_past_any_file() -> bytes:
    """A 4x4 RGB TIFF whose one strip starts at 2**63 (a LONG8 offset): no seek reaches it."""
    entries = [  # tag, type (3 SHORT, 4 LONG, 16 LONG8), value
        (256, 3, 4),  # ImageWidth
        (257, 3, 4),  # ImageLength
        (258, 3, 8),  # BitsPerSample
        (259, 3, 1),  # Compression: none
        (262, 3, 2),  # PhotometricInterpretation: RGB
        (273, 16, None),  # StripOffsets: out of line, after the directory
        (277, 3, 3),  # SamplesPerPixel
        (278, 3, 4),  # RowsPerStrip
        (279, 4, 48),  # StripByteCounts
    ]
    directory = 8
    out_of_line = directory + 2 + 12 * len(entries) + 4
    data = bytearray(b"II*\x00" + struct.pack("<IH", directory, len(entries)))
    for tag, type_, value in entries:
        packed = struct.pack("<I", out_of_line if value is None else value)
        data += struct.pack("<HHI", tag, type_, 1) + packed
    return bytes(data + struct.pack("<IQ", 0, 1 << 63) + bytes(48))


def _broken_images() -> list[bytes]:
    png = encode(gradient(256, 256), "PNG")
    # ImageMagick carries EXIF in a text chunk as hex; here it is not hex.
    raw_profile = _png_chunk(b"tEXt", b"Raw profile type exif\x00\nexif\n   4\nzzzz\n")
    return [
        png[: len(png) // 2],  # Pillow reads a PNG's data to look for EXIF after it
        png[:33] + raw_profile + png[33:],
        _tiff_with_strip_offsets_typed_double(),
        _tiff_with_a_strip_past_any_file(),
    ]


@pytest.mark.parametrize(
    "data", _broken_images(), ids=["truncated-png", "raw-exif-png", "tiff", "tiff-far-strip"]
)
def test_broken_png_and_tiff_are_unprocessable(data: bytes) -> None:
    with pytest.raises(UnprocessableImage):
        decode_image(data, max_pixels=CAP)


def test_large_jpeg_is_drafted_but_reports_full_size() -> None:
    data = encode(gradient(2000, 1200), "JPEG")
    decoded = decode_image(data, max_pixels=CAP, target_size=416)
    assert (decoded.width, decoded.height) == (2000, 1200)
    assert 416 <= decoded.image.width <= 1000  # DCT scaling by 1/2 or 1/4
    assert decoded.reduction in (2, 4)
    assert decoded.image.size == (2000 // decoded.reduction, 1200 // decoded.reduction)


def test_small_jpeg_is_not_drafted() -> None:
    data = encode(gradient(640, 480), "JPEG")
    assert decode_image(data, max_pixels=CAP, target_size=416).image.size == (640, 480)


def test_jpeg_is_not_drafted_below_the_short_side_asked_for() -> None:
    data = encode(gradient(2400, 600), "JPEG")
    by_longest = decode_image(data, max_pixels=CAP, target_size=416)
    assert min(by_longest.image.size) < 256  # 1/4 or 1/8 of 600
    both = decode_image(data, max_pixels=CAP, target_size=416, short_side=256)
    assert min(both.image.size) >= 256
    assert (both.width, both.height) == (2400, 600)


def progressive_jpeg(repeat_last_scan: int = 0) -> bytes:
    """A progressive JPEG; its last scan repeated, as a scan bomb repeats near-empty scans."""
    data = encode(gradient(640, 480), "JPEG", progressive=True)
    last = data.rfind(b"\xff\xda")
    assert data.endswith(b"\xff\xd9")
    return data[:-2] + data[last:-2] * repeat_last_scan + b"\xff\xd9"


def test_a_progressive_jpeg_with_scans_beyond_any_encoder_is_refused_before_decoding() -> None:
    assert decode_image(progressive_jpeg(), max_pixels=CAP).image.size == (640, 480)
    with pytest.raises(UnprocessableImage) as info:
        decode_image(progressive_jpeg(repeat_last_scan=100), max_pixels=CAP)
    assert info.value.extra == {"reason": "too_many_scans", "max_scans": 100}


def test_stray_bytes_before_the_scans_do_not_hide_them() -> None:
    """libjpeg skips bytes between segments; so does the count (one 0x00 used to end it)."""
    bomb = progressive_jpeg(repeat_last_scan=100)
    first_scan = bomb.find(b"\xff\xda")
    with pytest.raises(UnprocessableImage, match="scans"):
        decode_image(bomb[:first_scan] + b"\x00" + bomb[first_scan:], max_pixels=CAP)


def test_what_follows_the_end_of_the_image_is_not_counted() -> None:
    """Motion photos append a video after the JPEG's EOI."""
    trailer = b"\xff\xda" * 200
    assert decode_image(progressive_jpeg() + trailer, max_pixels=CAP).image.size == (640, 480)


def test_scans_are_counted_after_the_header_segments() -> None:
    """An EXIF thumbnail is a JPEG with its own scan, inside a header segment."""
    thumbnail = encode(gradient(64, 48), "JPEG")
    exif = Image.Exif()
    exif[0x010E] = "x"  # ImageDescription
    plain = encode(gradient(640, 480), "JPEG", progressive=True)
    with_app = plain[:2] + _app1(b"Exif\0\0" + exif.tobytes() + thumbnail * 200) + plain[2:]
    assert decode_image(with_app, max_pixels=CAP).image.size == (640, 480)


def _app1(payload: bytes) -> bytes:
    segments = []
    for start in range(0, len(payload), 65_000):  # a segment holds at most 65,533 bytes
        part = payload[start : start + 65_000]
        segments.append(b"\xff\xe1" + (len(part) + 2).to_bytes(2, "big") + part)
    return b"".join(segments)


@pytest.mark.parametrize("size", [(1, 100_000), (70_000, 2)])
def test_a_side_longer_than_any_real_photo_is_refused_before_decoding(
    size: tuple[int, int],
) -> None:
    """Pillow keeps a pointer per row: 1 x 50,000,000 would take gigabytes."""
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(png_bomb(*size), max_pixels=CAP)
    assert info.value.extra == {"reason": "too_long_side", "max_side": 65_535}


def test_the_pixel_cap_is_the_services_own_not_pillows() -> None:
    """Pillow refuses 179 MP by itself; an operator who allows more gets the image decoded
    (this PNG, a header with no pixel data, then fails as unreadable, not as too large)."""
    header = (20_000).to_bytes(4, "big") + (10_000).to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    no_pixels = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")
    with pytest.raises(PayloadTooLarge):
        decode_image(no_pixels, max_pixels=100_000_000)
    with pytest.raises(UnprocessableImage) as info:
        decode_image(no_pixels, max_pixels=300_000_000)
    assert info.value.extra == {"reason": "corrupt"}


def test_a_jpeg_carrying_more_pictures_is_decoded_as_a_jpeg() -> None:
    """Camera originals with an MPF preview open in Pillow as MPO."""
    photo = gradient(2000, 1200)
    buffer = io.BytesIO()
    photo.save(buffer, "MPO", save_all=True, append_images=[photo.resize((500, 300))])
    decoded = decode_image(buffer.getvalue(), max_pixels=CAP, target_size=416)
    assert (decoded.format, decoded.width, decoded.height) == ("JPEG", 2000, 1200)
    assert decoded.image.width <= 1000  # drafted, like any large JPEG


def test_drafted_sides_are_scaled_each_by_its_own_ratio() -> None:
    decoded = decode_image(encode(gradient(2049, 4000), "JPEG"), max_pixels=CAP, target_size=416)
    assert decoded.image.size == (257, 500)  # 1/8, each side rounded up
    detection = Detection(class_id=0, classname="person", conf=0.9, x1=1, y1=250, x2=128, y2=500)
    [box] = to_boxes([detection], decoded)
    assert (box.x1, box.y1, box.x2, box.y2) == (8, 2000, 1024, 4000)


def test_colour_profiles_are_kept_by_digest_and_huge_ones_ignored(evalset_dir: Path) -> None:
    """Never by their bytes: 32 distinct 16 MB profiles would otherwise stay in memory."""
    with Image.open(evalset_dir / "images" / "000000269196.jpg") as tagged:  # Adobe RGB
        adobe = bytes(tagged.info["icc_profile"])
    transforms = image_module._transforms
    transforms.clear()
    first = image_module._to_srgb(adobe, "RGB")
    assert first is not None
    assert image_module._to_srgb(bytes(bytearray(adobe)), "RGB") is first  # another copy
    assert [len(digest) for digest, _ in transforms] == [32]
    assert image_module._to_srgb(b"\0" * (image_module._MAX_PROFILE_BYTES + 1), "RGB") is None
    assert len(transforms) == 1


def _scan(data: bytes = b"\x12\x34") -> bytes:
    """An SOS segment (one component, spectral band 0-63) and some entropy-coded data."""
    return b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + data


def test_a_code_libjpeg_discards_hides_no_scans() -> None:
    """In a scan's data libjpeg drops a marker below SOF0 (0xFF 0x02) and reads on; a length
    read after it would skip the scans that follow."""
    hidden = _scan() * 150
    fake = b"\xff\x02" + (2 + len(hidden)).to_bytes(2, "big")
    assert image_module._scans(b"\xff\xd8" + _scan() + fake + hidden + b"\xff\xd9") > 100


def test_long_runs_of_fill_bytes_are_read_in_one_pass() -> None:
    """A run of 0xFF ending in 0x00 made the marker search quadratic (and it holds the GIL);
    fill bytes before a marker are skipped as libjpeg skips them."""
    run = b"\xff" * 50_000
    data = b"\xff\xd8" + (_scan(run + b"\x00") + run) * 3 + b"\xff\xd9"
    assert image_module._scans(data) == 3
