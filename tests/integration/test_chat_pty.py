"""`newllm chat` in a pseudo-terminal: prompts, replies, /reset, an empty line, invalid UTF-8, /quit -> exit 0.

A random tiny New-LLM, no real data; it is here rather than in unit/ because the child interpreter
takes seconds to import torch and transformers.
"""

import os
import select
import subprocess
import sys
import time

import pytest
import torch

from newllm.models import build_model
from newllm.models.new_llm import NewLLMConfig
from newllm.training.checkpoint import save_checkpoint

pty = pytest.importorskip("pty")  # POSIX only
pytestmark = pytest.mark.integration

TIMEOUT_S = 60  # per expected output; model loading in a fresh interpreter takes a few seconds


class Terminal:
    """The master side of a pseudo-terminal whose slave side is a child process's stdin, stdout and stderr."""

    def __init__(self, args: list[str], env: dict):
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.output = b""

    def expect(self, text: str, count: int) -> None:
        """Read until `text` has appeared `count` times in all output so far; fail after TIMEOUT_S."""
        deadline = time.monotonic() + TIMEOUT_S
        while self.output.count(text.encode()) < count:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                pytest.fail(f"waited for {count} x {text!r}; the terminal shows:\n{self.output.decode(errors='replace')}")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 4096)
        except OSError:  # EIO: the child has closed the terminal
            return False
        self.output += chunk
        return bool(chunk)

    def type(self, line: bytes) -> None:
        os.write(self.master, line + b"\n")

    def close(self) -> int:
        """The child's exit status, killing it if it has not left within TIMEOUT_S."""
        try:
            while self._read(0.5):
                pass  # drain, so that the child never blocks on a full terminal buffer
            return self.process.wait(timeout=TIMEOUT_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            os.close(self.master)


@pytest.fixture
def checkpoint(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    config = NewLLMConfig(
        vocab_size=tiny_tokenizer.get_vocab_size(), embedding_size=16, context_size=16, hidden_size=32,
        num_hidden_layers=2, dropout=0.0,
    )  # fmt: skip
    model = build_model("new_llm", config)
    return save_checkpoint(model, tiny_tokenizer, tmp_path / "new_llm")


def test_chat_session_in_a_terminal(checkpoint):
    env = {**os.environ, "TERM": "dumb", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "newllm.cli", "chat", "--checkpoint", str(checkpoint), "--max-new-tokens", "5"]
    terminal = Terminal(args, env)
    try:
        terminal.expect("you> ", 1)
        terminal.type(b"Hello , how are you ?")
        terminal.expect("bot> ", 1)
        terminal.expect("you> ", 2)
        terminal.type(b"")  # ignored: the prompt comes back
        terminal.expect("you> ", 3)
        terminal.type(b"caf\xc3\xa9 \xff\xfe the lamp ?")  # invalid UTF-8 must not end the chat
        terminal.expect("bot> ", 2)
        terminal.expect("you> ", 4)
        terminal.type(b"/reset")
        terminal.expect("(new conversation)", 1)
        terminal.expect("you> ", 5)
        terminal.type(b"Where is Mara ?")
        terminal.expect("bot> ", 3)
        terminal.expect("you> ", 6)
        terminal.type(b"/quit")
    finally:
        status = terminal.close()
    assert status == 0, terminal.output.decode(errors="replace")
    assert b"Traceback" not in terminal.output
