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
model then forgets the start of the conversation. Feeding and sampling go through the shared
`Decoder` (decoding.py), which keeps that window.
"""

from __future__ import annotations

import torch

from newllm.data.tokenizer import special_ids
from newllm.evaluation.decoding import Decoder, SamplingOptions, cache_bytes
from newllm.evaluation.generation import check_reply_length, clean_turn
from newllm.models.registry import usable_positions

COMMANDS = {"/reset": "start a new conversation", "/quit": "leave (so does Ctrl-D)"}


def clean_line(line: str) -> str:
    """A line typed at the prompt with control characters (escapes, NUL, stray newlines) dropped and spaces collapsed."""
    return clean_turn(line)


class ChatSession:
    """One conversation with `model`: `reply(text)` answers a user turn, `reset()` starts a new conversation."""

    def __init__(self, model, tokenizer, options: SamplingOptions | None = None, device="cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options or SamplingOptions()
        self.special = special_ids(tokenizer)
        self.model.to(torch.device(device)).eval()  # dropout would make even greedy replies random
        # GPT-2's positions it was trained on (usable_positions); None for the recurrent models
        self.n_positions: int | None = usable_positions(model)
        check_reply_length(self.options.max_new_tokens, self.n_positions)
        keep = None
        if self.n_positions is not None:
            # After a rebuild a whole reply (and its end_of_turn) must fit without another one.
            headroom = min(self.options.max_new_tokens + 1, self.n_positions // 2)
            keep = self.n_positions - headroom
        self._generator = torch.Generator()  # on the CPU: the same draws on every device
        self.decoder = Decoder(model, self.options, generator=self._generator, keep=keep)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation and re-seed sampling: the next reply is the same as the first one was."""
        self.decoder.reset()
        self.tokens_seen = 0  # every token fed this conversation, the model's replies included
        self.last_reply_ids: list[int] = []
        self._generator.manual_seed(self.options.seed)

    def state_bytes(self) -> int:
        """Bytes of the carried cache: constant for the recurrent models, growing up to n_positions for GPT-2."""
        return cache_bytes(self.decoder.cache) or 0

    @torch.no_grad()
    def reply(self, text: str) -> str:
        """The model's answer to the user's turn `text`, its special tokens removed; both turns join the state."""
        text = clean_line(text)
        if not text:
            raise ValueError("empty turn")
        special = self.special
        stops = (special.end_of_turn, special.end_of_text)
        # The leading space gives the first word the token it has inside a sentence, as in fine-tuning.
        words = self.tokenizer.encode(" " + text, add_special_tokens=False).ids
        opening = [special.end_of_text] if self.tokens_seen == 0 else []
        logits = self._feed([*opening, special.speaker_1, *words, special.end_of_turn, special.speaker_2])
        tokens = self.decoder.generate(logits, stops, pad_id=special.pad)[0].tolist()
        stopped = tokens[-1] in stops
        reply = tokens[:-1] if stopped else tokens
        self.tokens_seen += len(reply) - (0 if stopped else 1)  # generate() fed every token it picked but the last
        if not stopped:
            self._feed(reply[-1:])
        # Whatever ended the reply (end_of_text, the token limit), end_of_turn closes it as in fine-tuning,
        # so that the next user turn reads as the next turn of the same dialogue.
        self._feed([special.end_of_turn])
        self.last_reply_ids = reply
        return clean_line(self.tokenizer.decode(reply, skip_special_tokens=True))

    def _feed(self, ids: list[int]) -> torch.Tensor:
        """Absorb `ids` into the cache; the logits (1, V) for the token after them."""
        self.tokens_seen += len(ids)
        return self.decoder.prefill(torch.tensor([ids], dtype=torch.long, device=self.decoder.device))
