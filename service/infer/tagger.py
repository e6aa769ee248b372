"""EfficientNet-Lite0 ImageNet classifier: scene and object tags for a whole image (numpy only)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from service.infer.graph_edits import PixelInput
from service.infer.manifest import ModelError, read_lines, resolve, sha256_file
from service.infer.manifest_model import ManifestModel, check_square_input
from service.infer.runtime import ModelSession, ProviderChoice, load_onnx_session

MODEL_NAME = "efficientnet_lite0"
CLASSES_NAME = "imagenet_classes"
FILES = (MODEL_NAME, CLASSES_NAME)  # the manifest entries it loads
RESIZE_SHORT = 256
CROP = 224
# Its input is (x - 127) / 128 of RGB pixels: done inside the graph (``load_tagger``).
PIXELS = PixelInput(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))


@dataclass(frozen=True, slots=True)
class Tag:
    """One ImageNet class: its first lemma (``tiger cat``) and its softmax probability."""

    name: str
    conf: float


def parse_class_names(lines: Sequence[str]) -> list[str]:
    """``synset<TAB>lemma, lemma, ...`` lines -> the first lemma of each line."""
    names: list[str] = []
    for number, line in enumerate(lines, start=1):
        _, tab, lemmas = line.partition("\t")
        name = lemmas.split(",")[0].strip()
        if not tab or not name:
            raise ModelError(f"class list line {number} is not 'synset<TAB>lemmas': {line!r}")
        names.append(name)
    return names


def preprocess(image: PIL.Image.Image) -> np.ndarray:
    """RGB image -> uint8 ``[1,3,224,224]``: short side 256, centre crop."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    scale = RESIZE_SHORT / min(width, height)
    new_w, new_h = round(width * scale), round(height * scale)
    left, top = round((new_w - CROP) / 2), round((new_h - CROP) / 2)
    if (new_w, new_h) == (width, height):
        image = image.crop((left, top, left + CROP, top + CROP))
    else:
        # Only the crop is resampled: scaling the whole image first would, for a very long
        # thin image (1 x 4000 pixels in a 100-byte PNG), allocate gigabytes.
        sx, sy = new_w / width, new_h / height
        box = (left / sx, top / sy, (left + CROP) / sx, (top + CROP) / sy)
        image = image.resize((CROP, CROP), PIL.Image.Resampling.BILINEAR, box, reducing_gap=2.0)
    pixels = np.asarray(image, dtype=np.uint8)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return result


def top_tags(
    probs: np.ndarray, class_names: Sequence[str], *, top_k: int, min_conf: float
) -> list[Tag]:
    """The ``top_k`` most probable names with probability >= ``min_conf``, best first.

    Classes that share a name (ImageNet has two "crane"s, a bird and a machine, and two
    "maillot"s) are one tag, with their probabilities summed: a record never holds a tag
    twice, and the name's probability is that of either class.
    """
    flat = np.asarray(probs, dtype=np.float64).reshape(-1)
    if flat.shape[0] != len(class_names):
        raise ModelError(f"classifier gives {flat.shape[0]} scores for {len(class_names)} names")
    if top_k <= 0:
        return []
    names, groups = _name_groups(tuple(class_names))
    by_name = np.bincount(groups, weights=flat, minlength=len(names))
    order = np.argsort(-by_name, kind="stable")[:top_k]
    return [Tag(names[i], float(by_name[i])) for i in order.tolist() if by_name[i] >= min_conf]


@functools.lru_cache(maxsize=4)
def _name_groups(class_names: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """The distinct names in first-seen order, and each class's index among them."""
    index: dict[str, int] = {}
    groups = [index.setdefault(name, len(index)) for name in class_names]
    return list(index), np.array(groups, dtype=np.intp)


class EfficientNetTagger(ManifestModel):
    """An ImageNet classifier plus its pre- and post-processing; safe to share between threads."""

    def __init__(
        self,
        session: ModelSession,
        class_names: Sequence[str],
        *,
        model_name: str | None = None,
        model_sha256: str | None = None,
    ) -> None:
        check_square_input(session, CROP, "classifier")
        super().__init__(
            session, MODEL_NAME, class_names, model_name=model_name, model_sha256=model_sha256
        )

    def probabilities(self, image: PIL.Image.Image) -> np.ndarray:
        """Softmax over the 1000 classes, shape ``[1000]``."""
        logits = self._session.run({self._session.input_name: preprocess(image)})[0]
        return softmax(np.asarray(logits, dtype=np.float64).reshape(-1))

    def tag(self, image: PIL.Image.Image, *, top_k: int = 5, min_conf: float = 0.05) -> list[Tag]:
        """The ``top_k`` most probable ImageNet classes of an RGB image above ``min_conf``."""
        return top_tags(
            self.probabilities(image), self._class_names, top_k=top_k, min_conf=min_conf
        )


def load_tagger(
    model_dir: Path,
    *,
    provider: ProviderChoice = "auto",
    intra_op_threads: int = 0,
    engine_cache: Path | None = None,
) -> EfficientNetTagger:
    """The shipped EfficientNet-Lite0 tagger from ``model_dir``, checksums verified."""
    model_path, names_path = (resolve(model_dir, name) for name in FILES)
    names = parse_class_names(read_lines(names_path))
    session = load_onnx_session(
        model_path,
        provider=provider,
        intra_op_threads=intra_op_threads,
        pixels=PIXELS,
        engine_cache=engine_cache,
    )
    return EfficientNetTagger(session, names, model_sha256=sha256_file(model_path))
