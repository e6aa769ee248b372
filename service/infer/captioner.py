"""Neural image captioning: an exported vision encoder and text decoder run with ONNX Runtime.

An export directory (written by ``python -m models.export_captioner``) holds:

* ``encoder.onnx``: ``pixel_values`` -> ``encoder_hidden_states`` and, per decoder layer,
  ``cross_key.{i}`` / ``cross_value.{i}``, the cross-attention keys and values, computed once.
* ``decoder.onnx``: one step of the text decoder: ``input_ids``, the cross-attention keys and
  values and the self-attention ``past_key.{i}`` / ``past_value.{i}`` (empty on the first
  step) -> ``logits`` and ``present_key.{i}`` / ``present_value.{i}``.
* ``captioner.json`` (name, layer count, sha256 of every file), ``preprocessor.json``,
  ``generation.json`` and ``tokenizer.json``.

Greedy decoding and beam search (``service.infer.decoding``) reproduce transformers'
``generate()`` token for token.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import msgspec
import numpy as np
import PIL.Image
import tokenizers

from service.infer.decoding import FloatArray, Generation, beam_search, greedy
from service.infer.manifest import ModelError, reading, sha256_file
from service.infer.runtime import ProviderChoice, load_onnx_session

FORMAT_VERSION = 1
REQUIRED_FILES = (
    "captioner.json",
    "encoder.onnx",
    "decoder.onnx",
    "tokenizer.json",
    "preprocessor.json",
    "generation.json",
)
_RESAMPLE = {
    "nearest": PIL.Image.Resampling.NEAREST,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "box": PIL.Image.Resampling.BOX,
    "hamming": PIL.Image.Resampling.HAMMING,
}
_T = TypeVar("_T")


class CaptionerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """``captioner.json``: what the export is and which files belong to it."""

    format: int
    name: str
    architecture: str
    num_layers: int
    files: dict[str, str]  # file name -> sha256
    source: str = ""


class Preprocessing(msgspec.Struct, frozen=True, kw_only=True):
    """preprocessor.json: resize to ``width`` x ``height``, then ``(x * scale - mean) / std``."""

    height: int
    width: int
    resample: str
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _read_json(path: Path, kind: type[_T]) -> _T:
    try:
        return msgspec.json.decode(path.read_bytes(), type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ModelError(f"captioner file {path} is not valid: {exc}") from exc


def verify_export(export_dir: Path) -> CaptionerInfo:
    """The export's description, once every file it needs is there with its listed sha256;
    ``ModelError`` says what is wrong."""
    with reading(export_dir):
        return _verified_export(export_dir)


def _verified_export(export_dir: Path) -> CaptionerInfo:
    if not export_dir.is_dir():
        raise ModelError(f"captioner export directory {export_dir} does not exist")
    missing = [name for name in REQUIRED_FILES if not (export_dir / name).is_file()]
    if missing:
        raise ModelError(
            f"captioner export directory {export_dir} lacks {', '.join(missing)}; "
            "produce it with `python -m models.export_captioner`"
        )
    info = _read_json(export_dir / "captioner.json", CaptionerInfo)
    if info.format != FORMAT_VERSION:
        raise ModelError(
            f"captioner export {export_dir} has format {info.format}; "
            f"this service reads format {FORMAT_VERSION} (re-export it)"
        )
    unlisted = [name for name in REQUIRED_FILES[1:] if name not in info.files]
    if unlisted:  # a file without a checksum would be loaded unverified
        raise ModelError(
            f"captioner export {export_dir} gives no sha256 for {', '.join(unlisted)} "
            "in captioner.json (re-export it)"
        )
    for file_name, expected in info.files.items():
        path = export_dir / file_name
        if not path.is_file():
            raise ModelError(f"captioner file {path} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(
                f"captioner file {path} is corrupt: sha256 {actual}, expected {expected} "
                "(re-export or copy the directory again)"
            )
    return info


class NeuralCaptioner:
    """Captions images with an exported ViT-GPT2 or BLIP model; ``generate_ids`` is thread-safe."""

    def __init__(
        self,
        export_dir: Path,
        *,
        provider: ProviderChoice = "auto",
        intra_op_threads: int = 1,
    ) -> None:
        export_dir = Path(export_dir)
        # The decoder's inputs change shape at every step (the cache grows by one token):
        # TensorRT would build engine after engine inside requests. CUDA runs it as it is.
        provider = "cuda" if provider == "tensorrt" else provider
        info = verify_export(export_dir)
        self.export_dir = export_dir
        self.name: str = info.name
        # Lineage: the decoder's digest identifies the weights that wrote the text.
        self.sha256: str | None = info.files.get("decoder.onnx")
        self.version: str = (self.sha256 or "unknown")[:12]
        self.architecture: str = info.architecture
        self.num_layers = info.num_layers
        self.preprocessing = _read_json(export_dir / "preprocessor.json", Preprocessing)
        self.generation = _read_json(export_dir / "generation.json", Generation)
        if self.preprocessing.resample not in _RESAMPLE:
            raise ModelError(
                f"captioner {export_dir}: unknown resample {self.preprocessing.resample!r}"
            )
        try:
            self.tokenizer = tokenizers.Tokenizer.from_file(str(export_dir / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise ModelError(
                f"cannot load tokenizer {export_dir / 'tokenizer.json'}: {exc}"
            ) from exc
        # Float32 throughout, also on GPUs whose CUDA provider defaults to TF32: a greedy or
        # beam step takes the best of close logits, and TF32's rounding changed a test
        # export's tokens on an H100. Decoding is launch-bound, so TF32 would buy little.
        self.encoder, self.decoder = (
            load_onnx_session(
                export_dir / name, provider=provider, intra_op_threads=intra_op_threads, tf32=False
            )
            for name in ("encoder.onnx", "decoder.onnx")
        )
        self._cross_names = [
            f"cross_{kind}.{i}" for i in range(self.num_layers) for kind in ("key", "value")
        ]
        self._past_names = [
            f"past_{kind}.{i}" for i in range(self.num_layers) for kind in ("key", "value")
        ]
        expected = {"input_ids", *self._cross_names, *self._past_names}
        if expected != self.decoder.input_names:
            raise ModelError(
                f"captioner {export_dir}: captioner.json says {self.num_layers} decoder layers,"
                f" but decoder.onnx takes {len(self.decoder.input_names) - 1} cache inputs"
                f" (expected {len(expected) - 1}); re-export it"
            )

    @property
    def provider(self) -> str:
        return self.decoder.provider

    @property
    def instance_name(self) -> str:
        return self.name

    @property
    def input_side(self) -> int:
        """The longer side of the image the encoder takes."""
        return max(self.preprocessing.width, self.preprocessing.height)

    def preprocess(self, images: Sequence[PIL.Image.Image]) -> FloatArray:
        """``pixel_values`` (N, 3, H, W) float32, as the checkpoint's image processor makes them."""
        prep = self.preprocessing
        mean = np.asarray(prep.mean, dtype=np.float32)
        std = np.asarray(prep.std, dtype=np.float32)
        batch = np.empty((len(images), 3, prep.height, prep.width), dtype=np.float32)
        for index, image in enumerate(images):
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            if prep.do_resize and rgb.size != (prep.width, prep.height):
                rgb = rgb.resize((prep.width, prep.height), resample=_RESAMPLE[prep.resample])
            pixels = np.asarray(rgb)
            if pixels.shape != (prep.height, prep.width, 3):
                raise ValueError(
                    f"image {index} is {pixels.shape[1]}x{pixels.shape[0]} but the encoder "
                    f"takes {prep.width}x{prep.height}"
                )
            # Same arithmetic (float64 rescale, float32 normalise) as transformers' processors.
            values = pixels.astype(np.float64)
            if prep.do_rescale:
                values = values * prep.rescale_factor
            values32 = values.astype(np.float32)
            if prep.do_normalize:
                values32 = (values32 - mean) / std
            batch[index] = values32.transpose(2, 0, 1)
        return batch

    def encode(self, images: Sequence[PIL.Image.Image]) -> list[np.ndarray]:
        """The cross-attention keys and values of each decoder layer, batch first."""
        outputs = self.encoder.run({"pixel_values": self.preprocess(images)})
        return outputs[1 : 1 + 2 * self.num_layers]

    def _step(
        self, tokens: np.ndarray, cross: list[np.ndarray], past: list[np.ndarray]
    ) -> tuple[FloatArray, list[np.ndarray]]:
        """One decoder step: float32 logits (N, vocab) of the next token and the new cache."""
        feeds = {"input_ids": tokens.reshape(-1, 1).astype(np.int64)}
        feeds.update(zip(self._cross_names, cross, strict=True))
        feeds.update(zip(self._past_names, past, strict=True))
        outputs = self.decoder.run(feeds)
        logits = np.asarray(outputs[0][:, -1, :], dtype=np.float32)
        return logits, outputs[1:]

    def generate_ids(
        self,
        images: Sequence[PIL.Image.Image],
        *,
        num_beams: int = 1,
        max_length: int | None = None,
    ) -> list[list[int]]:
        """Token ids per image, starting with the decoder start token and ending at EOS.

        ``max_length`` counts every token, the start token included (transformers'
        ``max_length``); the generation config's value when omitted.
        """
        if num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {num_beams}")
        limit = self.generation.max_length if max_length is None else max_length
        if limit < 2:
            raise ValueError(f"max_length must be at least 2, got {limit}")
        if not images:
            return []
        cross = self.encode(images)
        if num_beams == 1:
            return greedy(self._step, cross, self.generation, limit)
        return beam_search(self._step, cross, self.generation, num_beams, limit)

    def caption(self, images: Sequence[PIL.Image.Image], *, num_beams: int = 1) -> list[str]:
        """One caption per image (special tokens dropped, surrounding spaces trimmed)."""
        ids = self.generate_ids(images, num_beams=num_beams)
        texts = self.tokenizer.decode_batch(ids, skip_special_tokens=True)
        return [text.strip() for text in texts]
