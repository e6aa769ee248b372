"""Synthetic test images for the captioner exports: each recipe is rendered with numpy only,
so the runtime tests regenerate exactly the same pixels without image files or torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image

TEST_IMAGES: list[dict[str, Any]] = [
    {
        "name": "gradient_horizontal",
        "size": [64, 48],
        "background": {"gradient": "horizontal", "start": [20, 40, 200], "end": [250, 220, 30]},
        "shapes": [],
    },
    {
        "name": "red_disc_on_grey",
        "size": [40, 40],
        "background": {"fill": [128, 128, 128]},
        "shapes": [{"type": "ellipse", "box": [8, 6, 32, 30], "fill": [220, 30, 30]}],
    },
    {
        "name": "boxes_on_vertical_gradient",
        "size": [50, 70],
        "background": {"gradient": "vertical", "start": [0, 0, 0], "end": [255, 255, 255]},
        "shapes": [
            {"type": "rectangle", "box": [5, 5, 25, 30], "fill": [0, 200, 0]},
            {"type": "rectangle", "box": [20, 40, 45, 65], "fill": [240, 240, 0]},
        ],
    },
    {
        "name": "checkerboard",
        "size": [32, 32],
        "background": {"checker": 4, "colours": [[255, 255, 255], [10, 10, 60]]},
        "shapes": [],
    },
    {
        "name": "blue_ellipse_diagonal",
        "size": [80, 60],
        "background": {"gradient": "diagonal", "start": [250, 240, 230], "end": [90, 60, 40]},
        "shapes": [
            {"type": "ellipse", "box": [10, 15, 70, 45], "fill": [30, 60, 230]},
            {"type": "rectangle", "box": [35, 0, 45, 60], "fill": [255, 140, 0]},
        ],
    },
    {
        "name": "magenta_square_on_teal",
        "size": [36, 36],
        "background": {"fill": [0, 128, 128]},
        "shapes": [{"type": "rectangle", "box": [6, 6, 30, 30], "fill": [230, 0, 200]}],
    },
    {
        "name": "plain_amber",
        "size": [40, 30],
        "background": {"fill": [250, 200, 0]},
        "shapes": [],
    },
]


def render_test_image(recipe: dict[str, Any]) -> PIL.Image.Image:
    """Render one ``TEST_IMAGES`` recipe to an RGB image (deterministic, numpy only)."""
    width, height = (int(v) for v in recipe["size"])
    background = recipe["background"]
    ys, xs = np.mgrid[0:height, 0:width]
    if "fill" in background:
        pixels = np.empty((height, width, 3), dtype=np.int64)
        pixels[:] = background["fill"]
    elif "checker" in background:
        cell = int(background["checker"])
        first, second = (np.asarray(c, dtype=np.int64) for c in background["colours"])
        odd = ((ys // cell + xs // cell) % 2).astype(bool)[..., None]
        pixels = np.where(odd, second, first)
    else:
        direction = background["gradient"]
        if direction == "horizontal":
            num, den = xs, max(width - 1, 1)
        elif direction == "vertical":
            num, den = ys, max(height - 1, 1)
        else:
            num, den = xs + ys, max(width + height - 2, 1)
        start = np.asarray(background["start"], dtype=np.int64)
        end = np.asarray(background["end"], dtype=np.int64)
        pixels = start + (end - start) * num[..., None] // den
    for shape in recipe["shapes"]:
        x0, y0, x1, y1 = (int(v) for v in shape["box"])
        if shape["type"] == "rectangle":
            mask = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
        else:
            # Integer arithmetic keeps the disc identical on every platform.
            cx2, cy2, rx, ry = x0 + x1 - 1, y0 + y1 - 1, x1 - x0, y1 - y0
            dx, dy = 2 * xs - cx2, 2 * ys - cy2
            mask = dx * dx * ry * ry + dy * dy * rx * rx <= rx * rx * ry * ry
        pixels[mask] = shape["fill"]
    return PIL.Image.fromarray(pixels.astype(np.uint8), mode="RGB")
