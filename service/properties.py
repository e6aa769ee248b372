"""Structural image properties computed from pixels (no models)."""

from __future__ import annotations

from PIL import Image

from service.domain.records import Color

_THUMBNAIL = (64, 64)


def dominant_colors(image: Image.Image, count: int = 5) -> list[Color]:
    """The ``count`` main colours of an RGB image with the fraction of pixels each covers."""
    thumb = image.copy()
    thumb.thumbnail(_THUMBNAIL, Image.Resampling.BILINEAR)
    palette_image = thumb.quantize(colors=count, method=Image.Quantize.MEDIANCUT)
    palette = palette_image.getpalette() or []
    total = thumb.width * thumb.height
    colors = []
    counts: list[tuple[int, int]] = palette_image.getcolors() or []  # type: ignore[assignment]
    for pixels, index in sorted(counts, reverse=True):
        r, g, b = palette[index * 3 : index * 3 + 3]
        colors.append(Color(hex=f"#{r:02x}{g:02x}{b:02x}", fraction=round(pixels / total, 4)))
    return colors
