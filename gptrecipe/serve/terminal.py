"""`gptrecipe chat CHECKPOINT`: a multi-turn chat in the terminal, streamed token by token.

Commands: /reset (forget the conversation), /save FILE (write {"messages": [...]} as JSON, the format
`gptrecipe sft --data` reads), /system TEXT (set the system prompt; /system alone clears it), /help,
/exit. Ctrl-C during a reply stops the reply (what was written stays in the conversation); Ctrl-C or
Ctrl-D at the prompt exits. When the conversation no longer fits in the context, the oldest turns are
dropped (the system prompt stays).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TextIO

from ..chat import Message, to_openai
from .engine import Engine, GenParams
from .served import ServedModel

HELP = ("commands: /reset  forget the conversation | /save FILE  save it as JSON | /system TEXT  set the "
        "system prompt | /help | /exit   (Ctrl-C stops a reply; Ctrl-D exits)")


class TerminalChat:
    """The conversation and the REPL around it; `stdin`/`stdout` may be any text streams (tests)."""

    def __init__(self, served: ServedModel, engine: Engine, params: GenParams, *, system: str | None = None,
                 stdin: TextIO | None = None, stdout: TextIO | None = None, toolset=None, max_calls: int = 3):
        self.served, self.engine, self.params = served, engine, params
        self.toolset, self.max_calls = toolset, max_calls
        self.system = system or ""
        self.messages: list[Message] = []
        self.stdin, self.out = stdin or sys.stdin, stdout or sys.stdout

    def conversation(self) -> list[Message]:
        return ([Message("system", self.system)] if self.system else []) + self.messages

    def fit(self) -> list[int]:
        """Prompt ids of the conversation, dropping the oldest turns until there is room for a reply."""
        room = min(self.params.max_tokens, self.served.block_size // 4)
        dropped = 0
        while True:
            ids = self.served.chat_ids(self.conversation())
            if len(ids) + room <= self.served.block_size or len(self.messages) <= 1:
                break
            self.messages.pop(0)
            dropped += 1
        if dropped:
            self.say(f"(dropped the {dropped} oldest message{'s' * (dropped > 1)} to fit the "
                     f"{self.served.block_size}-token context)")
        return ids

    def reply(self, text: str) -> str:
        """Stream the model's reply to `text`; Ctrl-C stops it. The reply joins the conversation."""
        self.messages.append(Message("user", text))
        ids = self.fit()
        if len(ids) >= self.served.block_size:
            self.messages.pop()
            self.say(f"(that message is too long for the {self.served.block_size}-token context)")
            return ""
        if self.toolset is not None:
            return self.reply_with_tools()
        pieces: list[str] = []
        stream = self.engine.stream([ids], self.params)
        try:
            for ev in stream:
                if ev.error:
                    self.say(f"\n(error: {ev.error})")
                if ev.text:
                    self.out.write(ev.text)
                    self.out.flush()
                    pieces.append(ev.text)  # what was shown
            self.out.write("\n")
        except KeyboardInterrupt:
            stream.close()  # cancels the request
            self.out.write(" [stopped]\n")
        reply = "".join(pieces)
        self.messages.append(Message("assistant", reply))
        return reply

    def reply_with_tools(self) -> str:
        """The reply through LaMDA's loop (the decoding core's tool loop): calls and results are shown and kept in
        the conversation (the results as tool segments)."""
        from ..tool_use import answer_with_tools

        def show_call(row: int, query: str, result: str) -> None:
            self.out.write(f"[TS, {query}]\n[toolset: {result}]\n")
            self.out.flush()

        def show(row: int, piece: str) -> None:
            self.out.write(piece)
            self.out.flush()

        turn = answer_with_tools(self.served.model, self.served.tokenizer, [self.conversation()],
                                 self.params.sampling(), self.toolset, max_calls=self.max_calls, on_text=show,
                                 on_call=show_call)[0]
        self.out.write("\n" + ("(call cap reached)\n" if turn.capped else ""))
        for query, result in turn.calls:
            self.messages += [Message("assistant", query, "toolset"), Message("tool", result)]
        self.messages.append(Message("assistant", turn.text))
        return turn.text

    def save(self, path: str) -> None:
        msgs = [to_openai(m, i) for i, m in enumerate(self.conversation())]
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(path).expanduser().write_text(json.dumps({"messages": msgs}, ensure_ascii=False, indent=2) + "\n")
        self.say(f"(saved {len(msgs)} messages to {path})")

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def read(self, prompt: str) -> str | None:
        """A line from the user, or None at end of input (Ctrl-D)."""
        if self.stdin is sys.stdin and sys.stdin.isatty() and self.out is sys.stdout:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())
            try:
                return input(prompt)
            except EOFError:
                return None
        self.out.write(prompt)
        self.out.flush()
        line = self.stdin.readline()
        return line.rstrip("\n") if line else None

    def command(self, line: str) -> bool:
        """Run a /command; False means exit."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.messages = []
            self.say("(conversation cleared)")
        elif name == "/save" and not arg:
            self.say("usage: /save FILE")
        elif name == "/save":
            try:
                self.save(arg)
            except OSError as e:
                self.say(f"(cannot save to {arg}: {e.strerror or e})")
        elif name == "/system":
            self.system = arg
            self.say(f"(system prompt {'set' if arg else 'cleared'})")
        elif name == "/help":
            self.say(HELP)
        else:
            self.say(f"unknown command {name}; {HELP}")
        return True

    def run(self) -> int:
        s = self.served
        self.say(f"chatting with '{s.name}' ({s.model.num_params():,} parameters, {s.block_size}-token context). "
                 "/help for commands, Ctrl-D to exit.")
        if self.system:
            self.say(f"(system prompt: {self.system})")
        while True:
            try:
                line = self.read("you> ")
            except KeyboardInterrupt:  # Ctrl-C at the prompt exits, as Ctrl-D does
                line = None
            if line is None:
                self.out.write("\n")
                return 0
            line = line.strip()
            if not line:
                continue
            if not line.startswith("/"):
                self.out.write("assistant> ")
                self.reply(line)
            elif not self.command(line):
                return 0


def chat(served: ServedModel, params: GenParams, *, system: str | None = None, stdin: TextIO | None = None,
         stdout: TextIO | None = None, toolset=None, max_calls: int = 3, threads: int | None = None) -> int:
    """Run the terminal chat until the user exits; returns the exit code. With a `toolset`, LaMDA's loop;
    `threads`: the engine thread's torch threads."""
    with Engine(served.model, served.tokenizer, stop_ids=served.stop_ids, threads=threads) as engine:
        return TerminalChat(served, engine, params, system=system, stdin=stdin, stdout=stdout, toolset=toolset,
                            max_calls=max_calls).run()
