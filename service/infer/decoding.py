"""Greedy decoding and beam search over a one-step text decoder, as transformers'
``generate()`` does them: the same end-of-sequence, minimum-length, length-penalty and
early-stopping rules, so the token ids match ``generate()``'s exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec
import numpy as np

FloatArray = np.ndarray
# One decoder step: (the last token of each row, cross-attention keys and values,
# self-attention cache) -> (float32 logits of the next token, the grown cache).
Step = Callable[
    [np.ndarray, list[np.ndarray], list[np.ndarray]], tuple[FloatArray, list[np.ndarray]]
]
# transformers marks impossible beams with this score rather than -inf.
_NEG = np.float32(-1.0e9)


class Generation(msgspec.Struct, frozen=True, kw_only=True):
    """``generation.json``: the special tokens and the length and beam-search rules."""

    decoder_start_token_id: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    max_length: int
    min_length: int = 0
    length_penalty: float = 1.0
    early_stopping: bool | Literal["never"] = False


def _log_softmax(logits: FloatArray) -> FloatArray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    result: FloatArray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def _top_k(scores: FloatArray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores per row, best first (ties: lower index first)."""
    rows = np.arange(scores.shape[0])[:, None]
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.lexsort((part, -scores[rows, part]), axis=1)
    result: np.ndarray = part[rows, order]
    return result


def _pick(array: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``array[b, indices[b, j], ...]`` for a (batch, beams, ...) array."""
    result: np.ndarray = array[np.arange(array.shape[0])[:, None], indices]
    return result


def empty_past(cross: list[np.ndarray], rows: int) -> list[np.ndarray]:
    """An empty self-attention cache for ``rows`` sequences, one array per cross array."""
    _, heads, _, head_dim = cross[0].shape
    return [np.zeros((rows, heads, 0, head_dim), dtype=cross[0].dtype) for _ in cross]


def eos_mask(gen: Generation, vocab: int) -> np.ndarray:
    mask = np.zeros(vocab, dtype=bool)
    mask[[t for t in gen.eos_token_ids if 0 <= t < vocab]] = True
    return mask


def suppress_eos(scores: FloatArray, length: int, gen: Generation) -> None:
    if length < gen.min_length:
        scores[:, list(gen.eos_token_ids)] = -np.inf


def greedy(
    step: Step, cross: list[np.ndarray], gen: Generation, max_length: int
) -> list[list[int]]:
    """Greedy decoding; an image leaves the batch once it has ended."""
    batch = cross[0].shape[0]
    results = [[gen.decoder_start_token_id] for _ in range(batch)]
    live = np.arange(batch)  # images still generating; finished ones leave the batch
    tokens = np.full(batch, gen.decoder_start_token_id, dtype=np.int64)
    past = empty_past(cross, batch)
    length = 1
    while live.size and length < max_length:
        scores, past = step(tokens, cross, past)
        suppress_eos(scores, length, gen)
        tokens = scores.argmax(axis=-1)
        for row, image in enumerate(live):
            results[image].append(int(tokens[row]))
        length += 1
        keep = ~eos_mask(gen, scores.shape[-1])[tokens]
        if not keep.all():
            live, tokens = live[keep], tokens[keep]
            cross = [array[keep] for array in cross]
            past = [array[keep] for array in past]
    return results


def beam_search(
    step: Step, cross: list[np.ndarray], gen: Generation, num_beams: int, max_length: int
) -> list[list[int]]:
    """transformers' vectorised beam search (``GenerationMixin._beam_search``), in numpy."""
    beams = num_beams
    batch = cross[0].shape[0]
    # Twice the beams (more with several EOS ids), so that `beams` candidates survive
    # even when the best ones all end.
    keep = max(2, 1 + len(gen.eos_token_ids)) * beams
    is_eos: np.ndarray | None = None
    is_top = np.arange(keep) < beams
    prompt = 1
    penalty = gen.length_penalty
    early = gen.early_stopping

    running = np.full((batch, beams, max_length), gen.pad_token_id, dtype=np.int64)
    running[:, :, 0] = gen.decoder_start_token_id
    running_scores = np.zeros((batch, beams), dtype=np.float32)
    running_scores[:, 1:] = _NEG  # only the first beam may expand on the first step
    finished_seqs = running.copy()
    finished_scores = np.full((batch, beams), _NEG, dtype=np.float32)
    finished_lens = np.ones((batch, beams), dtype=np.int64)
    is_finished = np.zeros((batch, beams), dtype=bool)
    improvable = np.ones(batch, dtype=bool)

    results: list[list[int]] = [[] for _ in range(batch)]
    live = np.arange(batch)
    cross = [np.repeat(array, beams, axis=0) for array in cross]
    past = empty_past(cross, batch * beams)
    tokens = running[:, :, 0].reshape(-1)
    length = 1
    while True:
        logits, past = step(tokens, cross, past)
        n = live.size
        log_probs = _log_softmax(logits)
        suppress_eos(log_probs, length, gen)
        vocab = log_probs.shape[-1]
        totals = (log_probs.reshape(n, beams, vocab) + running_scores[:, :, None]).reshape(
            n, beams * vocab
        )

        top = _top_k(totals, keep)
        top_scores = _pick(totals, top)
        source = top // vocab
        top_tokens = top % vocab
        top_seqs = _pick(running, source)
        top_seqs[:, :, length] = top_tokens
        if is_eos is None:
            is_eos = eos_mask(gen, vocab)
        hits = is_eos[top_tokens] | (length + 1 >= max_length)

        # The best `beams` unfinished continuations run on.
        alive_scores = top_scores + hits.astype(np.float32) * _NEG
        chosen = _top_k(alive_scores, beams)
        running = _pick(top_seqs, chosen)
        running_scores = _pick(alive_scores, chosen)
        running_source = _pick(source, chosen)

        # Finished continuations among the top `beams` compete for the final slots.
        just_finished = hits & is_top[None, :]
        candidate = top_scores / np.float32((length + 1 - prompt) ** penalty)
        if early is True:
            candidate += is_finished.all(axis=1, keepdims=True).astype(np.float32) * _NEG
        candidate += (~improvable)[:, None].astype(np.float32) * _NEG
        candidate += (~just_finished).astype(np.float32) * _NEG
        merged_scores = np.concatenate([finished_scores, candidate], axis=1)
        best = _top_k(merged_scores, beams)
        finished_scores = _pick(merged_scores, best)
        finished_seqs = _pick(np.concatenate([finished_seqs, top_seqs], axis=1), best)
        candidate_lens = np.full((n, keep), length + 1, dtype=np.int64)
        finished_lens = _pick(np.concatenate([finished_lens, candidate_lens], axis=1), best)
        is_finished = _pick(np.concatenate([is_finished, just_finished], axis=1), best)

        length += 1
        if early == "never" and penalty > 0.0:
            hypothetical = max_length - prompt
        else:
            hypothetical = length - prompt
        best_running = running_scores[:, :1] / np.float32(hypothetical**penalty)
        worst_finished = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), _NEG)
        improvable = improvable & (best_running > worst_finished).any(axis=1)

        done = ~improvable | hits.all(axis=1)
        if early is True:
            done |= is_finished.all(axis=1)
        for row in np.flatnonzero(done):
            size = int(finished_lens[row, 0])
            results[live[row]] = [int(t) for t in finished_seqs[row, 0, :size]]
        if done.all():
            return results
        if done.any():
            stay = ~done
            live, running, running_scores = live[stay], running[stay], running_scores[stay]
            running_source = running_source[stay]
            finished_seqs, finished_scores = finished_seqs[stay], finished_scores[stay]
            finished_lens, is_finished = finished_lens[stay], is_finished[stay]
            improvable = improvable[stay]
            rows = np.repeat(stay, beams)
            cross = [array[rows] for array in cross]
            past = [array[rows] for array in past]
        # Reorder the self-attention cache to follow the surviving beams.
        flat_source = (running_source + np.arange(live.size)[:, None] * beams).reshape(-1)
        past = [array[flat_source] for array in past]
        tokens = running[:, :, length - 1].reshape(-1)
