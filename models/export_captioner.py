"""Export a ViT-GPT2 or BLIP captioning model to the ONNX layout that ``NeuralCaptioner`` runs.

    python -m models.export_captioner --checkpoint DIR --out OUT_DIR
    python -m models.export_captioner --tiny vit-gpt2 --seed 0 --out OUT_DIR

``--checkpoint`` takes a Hugging Face checkpoint directory of a ``VisionEncoderDecoderModel``
(ViT encoder, GPT-2 decoder) or a ``BlipForConditionalGeneration``; ``--tiny`` builds a small,
randomly initialised model of the same architecture instead (no downloads).

Output files:

* ``encoder.onnx``: ``pixel_values`` -> ``encoder_hidden_states`` and, per decoder layer,
  the cross-attention ``cross_key.{i}`` / ``cross_value.{i}`` (computed once per image).
* ``decoder.onnx``: ``input_ids``, the cross-attention keys/values and the self-attention
  ``past_key.{i}`` / ``past_value.{i}`` (length 0 on the first step) -> ``logits`` and
  ``present_key.{i}`` / ``present_value.{i}``.
* ``tokenizer.json``, ``preprocessor.json``, ``generation.json``, ``captioner.json``.
* ``expected.json``: the token ids of transformers' own ``generate()`` (greedy and beam
  search) for synthetic test images, rendered from the recipes in ``test_images.json``.

After writing, the export is run with ``NeuralCaptioner`` and must reproduce
``expected.json`` token for token (exit status 1 otherwise). Needs the ``export`` extra.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import PIL.Image

from models.files import as_created

if TYPE_CHECKING:
    import torch

ARCHITECTURES = ("vit-gpt2", "blip")
FORMAT_VERSION = 1
OPSET = 18
BEAM_WIDTH = 3
TINY_SEEDS = {"vit-gpt2": 2, "blip": 1}  # chosen for a mix of caption lengths
TINY_EOS_BIAS = 4.0
# Non-default beam-search rules checked in addition to the checkpoint's own settings.
VARIANTS: list[dict[str, Any]] = [
    {"min_length": 6},
    {"early_stopping": True, "length_penalty": 0.6},
    {"early_stopping": "never", "length_penalty": 1.6},
]

# Synthetic test images: each recipe is rendered with numpy only, so the runtime tests can
# regenerate exactly the same pixels without any image files.
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


# A small caption vocabulary for the tiny models' tokenizers.
_WORD_LIST = (
    "a an the of on in with and at by near under over next to two three some "
    "man woman person people child boy girl dog cat horse bird cow sheep elephant "
    "bear zebra giraffe car bus truck train plane boat bike motorcycle street road "
    "field grass tree trees sky water beach snow mountain building city room table "
    "kitchen bed couch chair window door plate food pizza cake sandwich bowl cup "
    "red blue green yellow white black brown orange large small big little young "
    "old standing sitting walking riding holding looking playing eating flying "
    "parked lying is are its top front side group view picture photo close up"
)
_WORDS = tuple(_WORD_LIST.split())
_SUFFIXES = ("s", "es", "ing", "ed", "er", "ly")


@dataclass
class Exported:
    """What an export needs from a model, whichever architecture it is."""

    architecture: str
    name: str
    model: Any  # the transformers model, in eval mode
    decoder: Any  # the text decoder module called step by step
    encode: Callable[[torch.Tensor], torch.Tensor]  # pixels -> states the decoder attends to
    image_processor: Any
    tokenizer: Any  # a ``tokenizers.Tokenizer``
    decoder_start_token_id: int
    eos_token_ids: list[int]
    pad_token_id: int
    max_length: int
    source: str


def _gpt2_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer with GPT-2's byte-level spacing and one ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = [*_WORDS, *_SUFFIXES]
    vocab: dict[str, int] = {}
    for word in words:
        for form in ("\u0120" + word, word):  # "Ġ" is the byte-level encoding of a space
            if len(vocab) < vocab_size - 1:
                vocab.setdefault(form, len(vocab))
    while len(vocab) < vocab_size - 1:
        vocab[f"\u0120w{len(vocab)}"] = len(vocab)
    vocab["<|endoftext|>"] = vocab_size - 1
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))  # noqa: S106
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|endoftext|>"])
    return tokenizer


def _bert_tokenizer(vocab_size: int) -> Any:
    """A WordPiece tokenizer laid out like BLIP's: BERT specials plus ``[DEC]`` as the last id."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: index for index, token in enumerate(specials)}
    for piece in [*_WORDS, *("##" + s for s in _SUFFIXES)]:
        if len(vocab) < vocab_size - 1:
            vocab.setdefault(piece, len(vocab))
    while len(vocab) < vocab_size - 1:
        vocab[f"w{len(vocab)}"] = len(vocab)
    vocab["[DEC]"] = vocab_size - 1
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))  # noqa: S106
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens([*specials, "[DEC]"])
    return tokenizer


def _tiny_vit_gpt2(seed: int) -> Exported:
    import torch
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessorPil,
    )

    vocab_size = 192
    eos = vocab_size - 1
    encoder = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        initializer_range=0.2,
    )
    decoder = GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_inner=128,
        add_cross_attention=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        initializer_range=0.2,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = eos
    config.eos_token_id = eos
    config.pad_token_id = eos
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(config=config)
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    return _vit_gpt2(model, processor, _gpt2_tokenizer(vocab_size), "vit-gpt2-tiny", 20, "tiny")


def _tiny_blip(seed: int) -> Exported:
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil

    vocab_size = 160
    vision = {
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
        "initializer_range": 0.2,
    }
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "encoder_hidden_size": 48,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "sep_token_id": 3,
        "eos_token_id": 3,
        "bos_token_id": vocab_size - 1,
        "initializer_range": 0.2,
    }
    config = BlipConfig(vision_config=vision, text_config=text, projection_dim=32)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
    return _blip(model, processor, _bert_tokenizer(vocab_size), "blip-tiny", 20, "tiny")


def _vit_gpt2(
    model: Any, processor: Any, tokenizer: Any, name: str, max_length: int, source: str
) -> Exported:
    model.eval()
    needs_projection = (
        model.encoder.config.hidden_size != model.decoder.config.hidden_size
        and getattr(model.decoder.config, "cross_attention_hidden_size", None) is None
    )

    def encode(pixel_values: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = model.encoder(pixel_values=pixel_values).last_hidden_state
        return model.enc_to_dec_proj(hidden) if needs_projection else hidden

    generation = model.generation_config
    eos = (
        generation.eos_token_id
        if generation.eos_token_id is not None
        else model.config.eos_token_id
    )
    start = generation.decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id
    pad = (
        generation.pad_token_id
        if generation.pad_token_id is not None
        else model.config.pad_token_id
    )
    return Exported(
        architecture="vit-gpt2",
        name=name,
        model=model,
        decoder=model.decoder,
        encode=encode,
        image_processor=processor,
        tokenizer=tokenizer,
        decoder_start_token_id=int(start),
        eos_token_ids=_as_list(eos),
        pad_token_id=int(pad if pad is not None else _as_list(eos)[0]),
        max_length=max_length,
        source=source,
    )


def _blip(
    model: Any, processor: Any, tokenizer: Any, name: str, max_length: int, source: str
) -> Exported:
    model.eval()
    text = model.config.text_config

    def encode(pixel_values: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = model.vision_model(pixel_values=pixel_values)[0]
        return hidden

    # BlipForConditionalGeneration.generate starts from [bos] and stops at [SEP].
    return Exported(
        architecture="blip",
        name=name,
        model=model,
        decoder=model.text_decoder,
        encode=encode,
        image_processor=processor,
        tokenizer=tokenizer,
        decoder_start_token_id=int(text.bos_token_id),
        eos_token_ids=[int(text.sep_token_id)],
        pad_token_id=int(text.pad_token_id),
        max_length=max_length,
        source=source,
    )


def _as_list(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        raise SystemExit("the checkpoint names no end-of-sequence token")
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def _max_length(config: Any) -> int:
    """The checkpoint's length limit in tokens, the decoder start token included:
    ``max_new_tokens``, where set, takes precedence in ``generate()``."""
    if getattr(config, "max_new_tokens", None):
        return 1 + int(config.max_new_tokens)
    return int(config.max_length or 20)


def load_checkpoint(path: Path, max_length: int | None) -> Exported:
    """Load a local checkpoint directory (``config.json`` decides the architecture)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path).backend_tokenizer
    name = path.resolve().name
    if config.model_type == "vision-encoder-decoder":
        from transformers import VisionEncoderDecoderModel, ViTImageProcessorPil

        model = VisionEncoderDecoderModel.from_pretrained(path, attn_implementation="eager")
        if model.encoder.config.model_type != "vit" or model.decoder.config.model_type != "gpt2":
            raise SystemExit("only ViT encoders with GPT-2 decoders are supported")
        processor = ViTImageProcessorPil.from_pretrained(path)
        length = max_length or _max_length(model.generation_config)
        return _vit_gpt2(model, processor, tokenizer, name, length, str(path))
    if config.model_type == "blip":
        from transformers import BlipForConditionalGeneration, BlipImageProcessorPil

        blip = BlipForConditionalGeneration.from_pretrained(path, attn_implementation="eager")
        blip_processor = BlipImageProcessorPil.from_pretrained(path)
        length = max_length or _max_length(blip.generation_config)
        return _blip(blip, blip_processor, tokenizer, name, length, str(path))
    raise SystemExit(f"unsupported model type {config.model_type!r}; expected ViT-GPT2 or BLIP")


def build_tiny(architecture: str, seed: int, eos_bias: float = TINY_EOS_BIAS) -> Exported:
    """A small randomly initialised model of ``architecture`` with a matching tokenizer.

    ``eos_bias`` is added to the end-of-sequence logit: random weights rarely end a
    sequence, and captions of many lengths are what exercises the stopping rules.
    """
    import torch

    exported = _tiny_vit_gpt2(seed) if architecture == "vit-gpt2" else _tiny_blip(seed)
    exported.model.config._attn_implementation = "eager"
    exported.decoder.config._attn_implementation = "eager"
    exported.source = f"--tiny {architecture} --seed {seed} --eos-bias {eos_bias:g}"
    eos = exported.eos_token_ids[0]
    with torch.no_grad():
        if architecture == "vit-gpt2":
            # GPT-2's LM head has no bias: shift the final layer norm along the EOS embedding.
            row = exported.decoder.transformer.wte.weight[eos]
            exported.decoder.transformer.ln_f.bias += eos_bias * row / row.dot(row)
        else:
            exported.decoder.cls.predictions.bias[eos] += eos_bias
    return exported


def _decoder_shape(exported: Exported) -> tuple[int, int, int]:
    """(layers, heads, head dim) of the decoder's attention."""
    config = exported.decoder.config
    layers = int(getattr(config, "num_hidden_layers", getattr(config, "n_layer", 0)))
    heads = int(getattr(config, "num_attention_heads", getattr(config, "n_head", 0)))
    hidden = int(getattr(config, "hidden_size", getattr(config, "n_embd", 0)))
    return layers, heads, hidden // heads


def _encoder_hidden_size(exported: Exported) -> int:
    config = exported.decoder.config
    if exported.architecture == "blip":
        return int(config.encoder_hidden_size)
    return int(getattr(config, "cross_attention_hidden_size", None) or config.n_embd)


def _modules(exported: Exported) -> tuple[Any, Any]:
    """The two graphs as ``torch.nn.Module``s over flat tensors (no cache objects)."""
    import torch
    from transformers import DynamicCache, EncoderDecoderCache

    layers, _, _ = _decoder_shape(exported)
    encoder_hidden = _encoder_hidden_size(exported)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = exported.model

        def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
            hidden = exported.encode(pixel_values)
            # One decoder call fills the cross-attention cache; everything else it computes is
            # unused and pruned from the graph.
            probe = torch.zeros((hidden.shape[0], 1), dtype=torch.long, device=hidden.device)
            out = exported.decoder(
                input_ids=probe, encoder_hidden_states=hidden, use_cache=True, return_dict=True
            )
            cross = out.past_key_values.cross_attention_cache
            flat = [t for layer in cross.layers[:layers] for t in (layer.keys, layer.values)]
            return (hidden, *flat)

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = exported.model

        def forward(self, input_ids: torch.Tensor, *kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
            cross, past = DynamicCache(), DynamicCache()
            for i in range(layers):
                cross.update(kv[2 * i], kv[2 * i + 1], i)
                past.update(kv[2 * layers + 2 * i], kv[2 * layers + 2 * i + 1], i)
            cache = EncoderDecoderCache(past, cross)
            for i in range(layers):
                cache.is_updated[i] = True  # use the given cross keys/values as they are
            key = kv[0]
            # Only the shape of the encoder states matters once the cross cache is filled.
            stub = key.new_zeros((key.shape[0], key.shape[2], encoder_hidden))
            out = exported.decoder(
                input_ids=input_ids,
                encoder_hidden_states=stub,
                past_key_values=cache,
                use_cache=True,
                return_dict=True,
            )
            present = out.past_key_values.self_attention_cache
            flat = [t for layer in present.layers[:layers] for t in (layer.keys, layer.values)]
            return (out.logits, *flat)

    return Encoder().eval(), Decoder().eval()


def _kv_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]


def export_onnx(exported: Exported, out_dir: Path) -> None:
    """Write ``encoder.onnx`` and ``decoder.onnx``."""
    import torch
    from torch.export import Dim

    layers, heads, head_dim = _decoder_shape(exported)
    encoder, decoder = _modules(exported)
    cross_names = _kv_names("cross", layers)
    size = exported.image_processor.size
    pixels = torch.randn(2, 3, int(size["height"]), int(size["width"]))
    batch = Dim("batch", min=1, max=4096)
    with torch.no_grad():
        _, *cross = encoder(pixels)
    program = torch.onnx.export(
        encoder,
        (pixels,),
        dynamic_shapes=({0: batch},),
        input_names=["pixel_values"],
        output_names=["encoder_hidden_states", *cross_names],
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
    )
    _save(program, out_dir / "encoder.onnx")

    # One token per step. torch.export specialises sizes 0 and 1, so the past is traced at
    # length 3; the graph does not branch on it and runs with an empty past on the first
    # step (the verification after export covers that).
    ids = torch.randint(0, 10, (2, 1))
    past = [torch.randn(2, heads, 3, head_dim) for _ in range(2 * layers)]
    past_len = Dim("past", min=1, max=4096)
    kv_shapes = [{0: batch} for _ in cross] + [{0: batch, 2: past_len} for _ in past]
    program = torch.onnx.export(
        decoder,
        (ids, *cross, *past),
        dynamic_shapes=({0: batch}, tuple(kv_shapes)),
        input_names=["input_ids", *cross_names, *_kv_names("past", layers)],
        output_names=["logits", *_kv_names("present", layers)],
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
    )
    _save(program, out_dir / "decoder.onnx")


def _save(program: Any, path: Path) -> None:
    """Save without the exporter's per-node stack traces (half the file on small models)."""
    import onnx

    model = program.model_proto
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save_model(model, str(path))


# Generation settings the runtime does not implement; an export resets them to neutral values
# (with a warning) so that expected.json shows exactly what the runtime will do.
_NEUTRAL = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "exponential_decay_length_penalty": None,
    "renormalize_logits": False,
}
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def generation_settings(exported: Exported) -> tuple[dict[str, Any], dict[str, Any]]:
    """``generation.json`` and the keyword arguments that make ``generate()`` follow it."""
    config = exported.model.generation_config
    overrides: dict[str, Any] = {}
    for key, neutral in _NEUTRAL.items():
        value = getattr(config, key, neutral)
        if value not in (neutral, None) and not (key == "num_beam_groups" and value == 1):
            print(f"warning: generation setting {key}={value!r} is not supported; exported without")
        overrides[key] = neutral
    early_stopping = config.early_stopping if config.early_stopping is not None else False
    min_new_tokens = getattr(config, "min_new_tokens", None)
    settings = {
        "decoder_start_token_id": exported.decoder_start_token_id,
        "eos_token_ids": exported.eos_token_ids,
        "pad_token_id": exported.pad_token_id,
        "max_length": exported.max_length,
        "min_length": 1 + int(min_new_tokens) if min_new_tokens else int(config.min_length or 0),
        "length_penalty": float(config.length_penalty if config.length_penalty is not None else 1),
        "early_stopping": early_stopping,
    }
    kwargs = {
        **overrides,
        "do_sample": False,
        # The lengths in tokens, start token included; *_new_tokens would override them.
        "max_length": settings["max_length"],
        "min_length": settings["min_length"],
        "max_new_tokens": None,
        "min_new_tokens": None,
        "length_penalty": settings["length_penalty"],
        "early_stopping": early_stopping,
        "num_return_sequences": 1,
    }
    return settings, kwargs


def preprocessor_settings(processor: Any) -> dict[str, Any]:
    """``preprocessor.json`` from a transformers image processor (fixed-size resize only)."""
    size = processor.size
    if not (size.get("height") and size.get("width")):
        raise SystemExit(f"unsupported image processor size {dict(size)}; need height and width")
    if getattr(processor, "do_center_crop", False) or getattr(processor, "do_pad", False):
        raise SystemExit("image processors that crop or pad are not supported")
    return {
        "height": int(size["height"]),
        "width": int(size["width"]),
        "resample": _RESAMPLE_NAMES[int(processor.resample)],
        "do_resize": bool(processor.do_resize),
        "do_rescale": bool(processor.do_rescale),
        "rescale_factor": float(processor.rescale_factor),
        "do_normalize": bool(processor.do_normalize),
        "mean": [float(v) for v in processor.image_mean],
        "std": [float(v) for v in processor.image_std],
    }


def pixel_values(exported: Exported, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
    """What transformers' own image processor makes of ``images``."""
    batch = exported.image_processor(images=list(images), return_tensors="pt")
    values: torch.Tensor = batch["pixel_values"]
    return values


def reference_ids(
    exported: Exported, images: Sequence[PIL.Image.Image], num_beams: int, kwargs: dict[str, Any]
) -> list[list[int]]:
    """transformers' ``generate()`` token ids, one image at a time (no batch padding)."""
    import torch

    results = []
    with torch.no_grad():
        for image in images:
            output = exported.model.generate(
                pixel_values=pixel_values(exported, [image]), num_beams=num_beams, **kwargs
            )
            results.append([int(t) for t in output[0].tolist()])
    return results


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_export(exported: Exported, out_dir: Path) -> dict[str, Any]:
    """Write every file of the export directory; returns the ``expected.json`` content."""
    out_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(exported, out_dir)
    exported.tokenizer.save(str(out_dir / "tokenizer.json"))
    settings, kwargs = generation_settings(exported)
    _write_json(out_dir / "generation.json", settings)
    _write_json(out_dir / "preprocessor.json", preprocessor_settings(exported.image_processor))
    _write_json(out_dir / "test_images.json", TEST_IMAGES)
    images = [render_test_image(recipe) for recipe in TEST_IMAGES]
    greedy = reference_ids(exported, images, 1, kwargs)
    beam = reference_ids(exported, images, BEAM_WIDTH, kwargs)
    variants = [
        {
            "settings": variant,
            "num_beams": BEAM_WIDTH,
            "ids": reference_ids(exported, images, BEAM_WIDTH, {**kwargs, **variant}),
        }
        for variant in VARIANTS
    ]
    expected = {
        "max_length": settings["max_length"],
        "num_beams": BEAM_WIDTH,
        "images": [
            {"name": recipe["name"], "greedy": g, "beam": b}
            for recipe, g, b in zip(TEST_IMAGES, greedy, beam, strict=True)
        ],
        "variants": variants,
    }
    _write_json(out_dir / "expected.json", expected)
    layers, _, _ = _decoder_shape(exported)
    runtime_files = (
        "encoder.onnx",
        "decoder.onnx",
        "tokenizer.json",
        "preprocessor.json",
        "generation.json",
    )
    info = {
        "format": FORMAT_VERSION,
        "name": exported.name,
        "architecture": exported.architecture,
        "num_layers": layers,
        "source": exported.source,
        "files": {name: _sha256(out_dir / name) for name in runtime_files},
    }
    _write_json(out_dir / "captioner.json", info)
    return expected


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=1)
    # Lists of numbers (token ids, colours) on one line each, for readable diffs.
    text = re.sub(
        r"\[\s+([-+.\deE,\s]+?)\s+\]",
        lambda match: "[" + ", ".join(match.group(1).replace(",", " ").split()) + "]",
        text,
    )
    path.write_text(text + "\n", encoding="utf-8")


def verify(exported: Exported, out_dir: Path, expected: dict[str, Any]) -> list[str]:
    """Run the export with the service's runtime; the list of differences (empty: exact)."""
    from service.infer.captioner import NeuralCaptioner

    captioner = NeuralCaptioner(out_dir, provider="cpu")
    images = [render_test_image(recipe) for recipe in TEST_IMAGES]
    problems = []
    reference = pixel_values(exported, images).numpy()
    ours = captioner.preprocess(images)
    if not np.array_equal(reference, ours):
        problems.append(f"pixel_values differ by up to {np.abs(reference - ours).max():.3g}")
    entries = expected["images"]
    names = [entry["name"] for entry in entries]
    cases: list[tuple[str, int, dict[str, Any], list[list[int]]]] = [
        ("greedy", 1, {}, [entry["greedy"] for entry in entries]),
        ("beam", int(expected["num_beams"]), {}, [entry["beam"] for entry in entries]),
    ]
    cases += [
        (json.dumps(v["settings"]), int(v["num_beams"]), v["settings"], v["ids"])
        for v in expected["variants"]
    ]
    default = captioner.generation
    for label, beams, settings, want in cases:
        captioner.generation = msgspec.structs.replace(default, **settings)
        single = [captioner.generate_ids([image], num_beams=beams)[0] for image in images]
        batched = captioner.generate_ids(images, num_beams=beams)
        for name, ids, got_single, got_batched in zip(names, want, single, batched, strict=True):
            if got_single != ids:
                problems.append(f"{label} {name}: {got_single} != {ids}")
            if got_batched != got_single:
                problems.append(f"{label} {name}: batched {got_batched} != {got_single}")
        print(f"{label}: lengths " + " ".join(str(len(ids)) for ids in want))
    captioner.generation = default
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="Hugging Face checkpoint directory")
    source.add_argument("--tiny", choices=ARCHITECTURES, help="build a small random model")
    parser.add_argument("--seed", type=int, help="seed of the --tiny weights (default: fixtures')")
    parser.add_argument(
        "--eos-bias", type=float, default=TINY_EOS_BIAS, help="--tiny: added to the EOS logit"
    )
    parser.add_argument("--max-length", type=int, help="generation max_length (tokens)")
    parser.add_argument("--name", help="captioner name (default: checkpoint dir or <arch>-tiny)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args(argv)

    if args.tiny:
        seed = TINY_SEEDS[args.tiny] if args.seed is None else args.seed
        exported = build_tiny(args.tiny, seed, args.eos_bias)
        if args.max_length:
            exported.max_length = args.max_length
    else:
        exported = load_checkpoint(args.checkpoint, args.max_length)
    if args.name:
        exported.name = args.name
    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not (out / "captioner.json").is_file():
        raise SystemExit(f"{out} holds files that are not a captioner export; choose another --out")
    # Written beside --out and moved there only once verified: the service loads any export
    # whose checksums match, so a failed one must never be left where it would be found.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        expected = write_export(exported, staging)
        problems = verify(exported, staging, expected)
        for problem in problems:
            print(f"MISMATCH {problem}", file=sys.stderr)
        if problems:
            print(f"nothing written to {out}: the export does not reproduce generate()")
            return 1
        if out.exists():
            shutil.rmtree(out)  # the previous export (checked above)
        as_created(staging)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{exported.name}: ONNX runtime reproduces transformers' generate() exactly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
