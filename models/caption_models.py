"""The captioning models an export starts from: a local Hugging Face checkpoint (ViT-GPT2 or
BLIP), or a small randomly initialised model of either architecture with a matching tokenizer
(no downloads). torch and transformers (the ``export`` extra) are imported where used."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ARCHITECTURES = ("vit-gpt2", "blip")
TINY_SEEDS = {"vit-gpt2": 2, "blip": 1}  # chosen for a mix of caption lengths
TINY_EOS_BIAS = 4.0

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
