"""Chat feedback as reward-model data: users' reactions become comparisons in the rankings format.

The web chat sends, for a reply in a conversation:
- a choice between two replies to the same context (after "regenerate", or thumbs up on one version and
  down / nothing on another): one line `{"prompt", "chosen", "rejected", ...}`;
- a ranking of several replies: `{"prompt", "responses": [best, ..., worst], ...}`;
- a lone thumbs up / down: a rating line in the sibling file `<name>.ratings.jsonl` (one reply alone is
  no comparison, so it stays out of the rankings file).
The rankings file is what `gptrecipe rm --data FILE` (`gptrecipe.rm.read_rankings`) trains on. The prompt is
the conversation before the reply: the user's message itself when it is a single turn without a system
prompt (exactly what the reward model sees at training time), otherwise a readable transcript
("System: ...", "User: ...", "Assistant: ..."); the structured messages are kept beside it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from ..chat import Message
from ..io import append_line

LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


def prompt_text(messages: list[Message]) -> str:
    """The conversation before a reply, as the rankings' prompt string."""
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].content
    return "\n\n".join(f"{LABELS[m.role]}: {m.content}" for m in messages)


class FeedbackLog:
    """Appends comparisons to a JSONL file (thread-safe; one line per write, flushed and synced)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.ratings_path = self.path.with_name(self.path.name.removesuffix(".jsonl") + ".ratings.jsonl")
        self._lock = threading.Lock()

    def _append(self, path: Path, messages: list[Message], meta: dict[str, Any], **fields: Any) -> dict[str, Any]:
        record = {"prompt": prompt_text(messages),
                  "messages": [{"role": m.role, "content": m.content} for m in messages],
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  **{k: v for k, v in meta.items() if v is not None}, **fields}
        with self._lock:
            append_line(path, record)
        return record

    def add_comparison(self, messages: list[Message], chosen: str, rejected: str, **meta: Any) -> dict[str, Any]:
        """`chosen` was preferred to `rejected` as the reply to `messages`."""
        if chosen == rejected:
            raise ValueError("chosen and rejected are the same reply: no preference to learn from")
        return self._append(self.path, messages, meta, chosen=chosen, rejected=rejected)

    def add_ranking(self, messages: list[Message], responses: list[str], **meta: Any) -> dict[str, Any]:
        """Replies to `messages` ranked best first."""
        if len(responses) < 2 or len(set(responses)) < len(responses):
            raise ValueError("a ranking needs at least 2 different replies")
        return self._append(self.path, messages, meta, responses=list(responses))

    def add_rating(self, messages: list[Message], response: str, rating: int, **meta: Any) -> dict[str, Any]:
        """A thumbs up (+1) or down (-1) on one reply, into the ratings file."""
        if rating not in (1, -1):
            raise ValueError("rating must be 1 (thumbs up) or -1 (thumbs down)")
        return self._append(self.ratings_path, messages, meta, response=response, rating=rating)
