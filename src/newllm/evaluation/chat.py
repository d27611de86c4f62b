"""Multi-turn chat with any of the models, carrying its cache from turn to turn instead of re-reading the history.

The conversation is laid out as in fine-tuning (dailydialog.py), the user as speaker 1 and the
model as speaker 2. Each `reply` feeds only what is new on top of the cache left by the previous one:

    eot spk1 Hi there eoturn spk2  Hello !  eoturn spk1 How are you ? eoturn spk2  Fine .  eoturn
    `-- reply("Hi there") feeds -'  sampled  `-- reply("How are you ?") feeds --'  sampled
                                    (each sampled token is fed back, then end_of_turn closes the turn)

New-LLM and the LSTM carry their fixed-size `state` (the context vector, or (h, c)): memory per
conversation is constant however long it runs, and the state is exactly what a forward over the
whole history would leave. GPT-2 carries its key/value cache, which grows by one entry per token
up to the positions it was trained on (`usable_positions`: at most `n_positions`); a turn that would
go past them rebuilds the cache from the last tokens that fit (leaving room for a full reply), so the
model then forgets the start of the conversation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from newllm.data.tokenizer import special_ids
from newllm.evaluation.generation import clean_turn
from newllm.evaluation.speed import cache_bytes
from newllm.models.registry import cache_argument, output_cache, usable_positions

COMMANDS = {"/reset": "start a new conversation", "/quit": "leave (so does Ctrl-D)"}


@dataclass(frozen=True)
class SamplingOptions:
    """How replies are decoded: greedy, or sampled with temperature, top-k (0 = off) and top-p from `seed`."""

    max_new_tokens: int = 40
    do_sample: bool = True
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = no limit), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")


def clean_line(line: str) -> str:
    """A line typed at the prompt with control characters (escapes, NUL, stray newlines) dropped and spaces collapsed."""
    return clean_turn(line)


class ChatSession:
    """One conversation with `model`: `reply(text)` answers a user turn, `reset()` starts a new conversation."""

    def __init__(self, model, tokenizer, options: SamplingOptions | None = None, device="cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options or SamplingOptions()
        self.device = torch.device(device)
        self.special = special_ids(tokenizer)
        self.model.to(self.device).eval()  # dropout would make even greedy replies random
        self._cache_name = cache_argument(model)
        # GPT-2's positions it was trained on (usable_positions); None for the recurrent models
        self.n_positions: int | None = usable_positions(model)
        if self.n_positions is not None:
            # After a rebuild a whole reply (and its end_of_turn) must fit without another one.
            headroom = min(self.options.max_new_tokens + 1, self.n_positions // 2)
            self._keep = self.n_positions - headroom
        self._generator = torch.Generator()
        self.reset()

    def reset(self) -> None:
        """Forget the conversation and re-seed sampling: the next reply is the same as the first one was."""
        self._cache = None
        self._window: list[int] = []  # GPT-2 only: the ids its cache holds, to rebuild it from
        self.tokens_seen = 0  # every token fed this conversation, the model's replies included
        self.last_reply_ids: list[int] = []
        self._generator.manual_seed(self.options.seed)

    def state_bytes(self) -> int:
        """Bytes of the carried cache: constant for the recurrent models, growing up to n_positions for GPT-2."""
        return cache_bytes(self._cache) or 0

    @torch.no_grad()
    def reply(self, text: str) -> str:
        """The model's answer to the user's turn `text`, its special tokens removed; both turns join the state."""
        text = clean_line(text)
        if not text:
            raise ValueError("empty turn")
        special = self.special
        # The leading space gives the first word the token it has inside a sentence, as in fine-tuning.
        words = self.tokenizer.encode(" " + text, add_special_tokens=False).ids
        opening = [special.end_of_text] if self.tokens_seen == 0 else []
        logits = self._feed([*opening, special.speaker_1, *words, special.end_of_turn, special.speaker_2])
        reply: list[int] = []
        while len(reply) < self.options.max_new_tokens:
            token = self._next_token(logits)
            if token in (special.end_of_turn, special.end_of_text):
                break
            reply.append(token)
            logits = self._feed([token])
        # Whatever ended the reply (end_of_text, the token limit), end_of_turn closes it as in fine-tuning,
        # so that the next user turn reads as the next turn of the same dialogue.
        self._feed([special.end_of_turn])
        self.last_reply_ids = reply
        return clean_line(self.tokenizer.decode(reply, skip_special_tokens=True))

    def _feed(self, ids: list[int]) -> torch.Tensor:
        """Absorb `ids` into the cache; the logits (V,) for the token after them."""
        self.tokens_seen += len(ids)
        if self.n_positions is not None:
            if len(self._window) + len(ids) > self.n_positions:
                # Out of positions: rebuild the cache from the most recent tokens, from position 0.
                self._window = (self._window + ids)[-self._keep :]
                self._cache = None
                ids = self._window
            else:
                self._window = self._window + ids
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)
        # No padding anywhere; GPT-2's mask spans its cache as well, the recurrent models' only the new tokens.
        width = len(self._window) if self.n_positions is not None else len(ids)
        attention_mask = torch.ones(1, width, dtype=torch.long, device=self.device)
        kwargs = {} if self._cache is None else {self._cache_name: self._cache}
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **kwargs)
        self._cache = output_cache(output)
        return output.logits[0, -1]  # (V,)

    def _next_token(self, logits: torch.Tensor) -> int:
        """Greedy, or a draw from the temperature / top-k / top-p filtered distribution."""
        if not self.options.do_sample:
            return int(logits.argmax())
        logits = logits.float().cpu() / self.options.temperature  # (V,); the generator lives on the CPU
        if 0 < self.options.top_k < logits.numel():
            kth = torch.topk(logits, self.options.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.options.top_p < 1:
            sorted_logits, order = torch.sort(logits, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            # Drop a token once the more likely ones already reach top_p; the most likely always stays.
            beyond = probs.cumsum(-1) - probs >= self.options.top_p
            logits = logits.index_fill(0, order[beyond], float("-inf"))
        return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=self._generator))
