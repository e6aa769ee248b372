"""Export a ViT-GPT2 or BLIP captioning model to the ONNX layout that ``NeuralCaptioner`` runs.

    python -m models.export_captioner --checkpoint DIR --out OUT_DIR
    python -m models.export_captioner --tiny vit-gpt2 --seed 0 --out OUT_DIR

``--checkpoint`` takes a Hugging Face checkpoint directory of a ``VisionEncoderDecoderModel``
(ViT encoder, GPT-2 decoder) or a ``BlipForConditionalGeneration``; ``--tiny`` builds a small,
randomly initialised model of the same architecture instead (no downloads); both are built
in ``models.caption_models``.

Output files:

* ``encoder.onnx``: ``pixel_values`` -> ``encoder_hidden_states`` and, per decoder layer,
  the cross-attention ``cross_key.{i}`` / ``cross_value.{i}`` (computed once per image).
* ``decoder.onnx``: ``input_ids``, the cross-attention keys/values and the self-attention
  ``past_key.{i}`` / ``past_value.{i}`` (length 0 on the first step) -> ``logits`` and
  ``present_key.{i}`` / ``present_value.{i}``.
* ``tokenizer.json``, ``preprocessor.json``, ``generation.json``, ``captioner.json``.
* ``expected.json``: the token ids of transformers' own ``generate()`` (greedy and beam
  search) for synthetic test images, rendered from the recipes in ``test_images.json``
  (``models.caption_images``).

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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import PIL.Image

from models.caption_images import TEST_IMAGES, render_test_image
from models.caption_models import (
    ARCHITECTURES,
    TINY_EOS_BIAS,
    TINY_SEEDS,
    Exported,
    build_tiny,
    load_checkpoint,
)
from models.files import as_created

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
OPSET = 18
BEAM_WIDTH = 3
# Non-default beam-search rules checked in addition to the checkpoint's own settings.
VARIANTS: list[dict[str, Any]] = [
    {"min_length": 6},
    {"early_stopping": True, "length_penalty": 0.6},
    {"early_stopping": "never", "length_penalty": 1.6},
]


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
