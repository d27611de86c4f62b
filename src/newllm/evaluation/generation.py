"""Dialogue responses from any of the models through the shared decoding path: greedy, or sampled with a fixed seed.

The prompt is the conversation so far in the fine-tuning layout (`format_prompt`), ending with the
next speaker's token; the reply ends at end_of_turn (or end_of_text). `respond_batch` gives the
same greedy replies to many conversations, left-padded into batches. A model with learned
positions (GPT-2's `max_position_embeddings`) keeps only the last tokens of a prompt too long for
them; the recurrent models have no such limit and always read the whole prompt.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from newllm.data.dailydialog import format_prompt
from newllm.data.tokenizer import special_ids
from newllm.evaluation.decoding import Decoder, SamplingOptions
from newllm.models.registry import usable_positions


@dataclass(frozen=True)
class Sample:
    """One prompt with the greedy and the sampled reply."""

    prompt: str
    greedy: str
    sampled: str


def clean_turn(turn: str) -> str:
    """The turn with control characters (newlines, NUL, escapes) as spaces and runs of whitespace as one."""
    if not isinstance(turn, str):
        raise TypeError(f"a turn must be a str, got {type(turn).__name__}")
    try:
        turn.encode("utf-8")
    except UnicodeEncodeError as err:
        # Python hands undecodable argv bytes over as lone surrogates (surrogateescape); the tokenizer can't take them.
        bad = turn[err.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"lone surrogate U+{ord(bad):04X}"
        raise ValueError(f"the prompt is not valid UTF-8 text ({byte} at character {err.start})") from None
    # A raw newline would be the prototype tokenizer's <EOS>, and escapes are noise to every tokenizer.
    text = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in turn)
    return " ".join(text.split())


def prompt_ids(model, tokenizer, turns: Sequence[str], max_new_tokens: int) -> list[int]:
    """The ids `respond` feeds `model`: the formatted turns, cut on the left to fit the positions it was trained on."""
    if isinstance(turns, (str, bytes, bytearray)) or not isinstance(turns, Sequence):
        raise TypeError(f"turns must be a list of str, got {type(turns).__name__}")
    ids = format_prompt(tokenizer, [clean_turn(turn) for turn in turns])
    limit = usable_positions(model)
    check_reply_length(max_new_tokens, limit)
    if limit is not None:
        # The end of the prompt (latest turn, next speaker's token) is what the reply depends on most.
        ids = ids[-(limit - max_new_tokens) :]
    return ids


def check_reply_length(max_new_tokens, positions: int | None, setting: str = "max_new_tokens") -> None:
    """ValueError naming `setting` unless 1 <= max_new_tokens <= positions // 2 (no upper bound where positions is None).

    A model with learned positions (`usable_positions`: GPT-2's) reads the prompt and the reply in those
    positions. The reply may take at most half, so that the prompt keeps the other half: it is cut on the left
    to what is left, and a reply as long as the positions would be answering its own last token. Chat rebuilds
    its window with the same half (chat.py), so a reply this long never slides the window mid-turn.
    The recurrent models have no such limit: they read any length."""
    most = None if positions is None else positions // 2
    is_int = isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool)
    if is_int and max_new_tokens >= 1 and (most is None or max_new_tokens <= most):
        return
    allowed = "at least 1" if most is None else (
        f"in [1, {most}] for this model (it reads {positions} positions; the prompt keeps at least half)"
    )
    raise ValueError(f"{setting}: must be {allowed}, got {max_new_tokens!r}")


def _cuda_indices(device: torch.device) -> list[int]:
    """The CUDA device whose RNG sampling draws from, or none on CPU."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _replies(model, tokenizer, prompts: Sequence[list[int]], device: torch.device, options: SamplingOptions) -> list[str]:
    """One reply per prompt (ids), decoded together, the prompts left-padded to a common length."""
    special = special_ids(tokenizer)
    stop_ids = [special.end_of_turn, special.end_of_text]
    width = max(len(ids) for ids in prompts)
    # Left padding keeps every prompt's last token (the next speaker's) in the last column, where the
    # reply starts; the mask freezes the recurrent state over the pads and hides them from GPT-2.
    input_ids = torch.tensor([[special.pad] * (width - len(ids)) + ids for ids in prompts], device=device)  # (B, T)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
    decoder = Decoder(model, options)
    output = decoder.generate(decoder.prefill(input_ids, attention_mask), stop_ids, pad_id=special.pad)  # (B, n)
    replies = []
    for row in output.tolist():
        # Cut at the first stop token ourselves: a tokenizer that doesn't mark it special would print what
        # follows, and a row that finished before the others is filled with pads up to the longest.
        for position, token in enumerate(row):
            if token in stop_ids:
                row = row[:position]
                break
        replies.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return replies


def respond(
    model,
    tokenizer,
    turns: Sequence[str],
    *,
    max_new_tokens: int = 40,
    do_sample: bool = False,
    temperature: float = 0.8,
    top_k: int = 50,
    top_p: float = 0.95,
    seed: int = 0,
    device="cpu",
) -> str:
    """The model's next turn after `turns` (the model is moved to `device`), special tokens removed."""
    check_reply_length(max_new_tokens, usable_positions(model))
    options = SamplingOptions(max_new_tokens, do_sample, temperature, top_k, top_p, seed)
    ids = prompt_ids(model, tokenizer, turns, max_new_tokens)
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()  # dropout would make even greedy decoding random
    try:
        # Draws come from the global RNG, as generate()'s do: seeded inside a fork, which restores it afterwards.
        with torch.random.fork_rng(devices=_cuda_indices(device)):
            torch.manual_seed(seed)
            (reply,) = _replies(model, tokenizer, [ids], device, options)
    finally:
        model.train(was_training)
    return reply


def respond_batch(
    model,
    tokenizer,
    conversations: Sequence[Sequence[str]],
    *,
    max_new_tokens: int = 40,
    batch_size: int = 32,
    device="cpu",
) -> list[str]:
    """The greedy reply `respond` gives to each conversation, generated `batch_size` at a time."""
    check_reply_length(max_new_tokens, usable_positions(model))
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(conversations, (str, bytes, bytearray)) or not isinstance(conversations, Sequence):
        raise TypeError(f"conversations must be a list of lists of str, got {type(conversations).__name__}")
    prompts = [prompt_ids(model, tokenizer, turns, max_new_tokens) for turns in conversations]
    # Prompts of similar length share a batch: little time goes into pads (a recurrent model steps through them).
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    device = torch.device(device)
    replies: list[str | None] = [None] * len(prompts)
    options = SamplingOptions(max_new_tokens, do_sample=False)
    was_training = model.training
    model.to(device).eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            texts = _replies(model, tokenizer, [prompts[i] for i in chunk], device, options)
            for i, text in zip(chunk, texts):
                replies[i] = text
    finally:
        model.train(was_training)
    return replies


def sample_responses(model, tokenizer, prompts: Iterable[str], **kwargs) -> list[Sample]:
    """A greedy and a sampled reply to each prompt (one opening turn each); `kwargs` go to `respond`."""
    if "do_sample" in kwargs:
        raise TypeError("sample_responses makes both a greedy and a sampled reply; do not pass do_sample")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of str, not one str")
    return [
        Sample(
            prompt=prompt,
            greedy=respond(model, tokenizer, [prompt], do_sample=False, **kwargs),
            sampled=respond(model, tokenizer, [prompt], do_sample=True, **kwargs),
        )
        for prompt in prompts
    ]
