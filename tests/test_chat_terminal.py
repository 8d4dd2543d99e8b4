"""`gptrecipe chat`: the terminal REPL, driven through fake stdin/stdout and as a real subprocess."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gptrecipe.chat import ChatTemplate, Message
from gptrecipe.cli import main
from gptrecipe.sample import SamplingConfig, generate
from gptrecipe.serve.engine import Engine, GenParams
from gptrecipe.serve.served import load_served
from gptrecipe.serve.terminal import TerminalChat
from tests.serve_util import tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, small_tok):
    return tiny_checkpoint(tmp_path_factory.mktemp("chat") / "sft", small_tok, block_size=256)


def run_chat(ckpt_path, lines: str, stdout=None, **kw) -> tuple[int, str, TerminalChat]:
    served = load_served(ckpt_path, device="cpu")
    out = stdout or io.StringIO()
    with Engine(served.model, served.tokenizer, stop_ids=served.stop_ids) as engine:
        chat = TerminalChat(served, engine, GenParams(max_tokens=12, temperature=0), stdin=io.StringIO(lines),
                            stdout=out, **kw)
        rc = chat.run()
        assert engine.running == 0
    return rc, out.getvalue() if isinstance(out, io.StringIO) else "", chat


def test_conversation_save_reset_system_and_ctrl_d(ckpt, tmp_path, small_tok):
    path, model = ckpt
    first, after_reset = tmp_path / "first.json", tmp_path / "sub" / "after_reset.json"
    rc, out, chat = run_chat(path, f"Hello!\n\nWhat is AI?\n/save {first}\n/reset\n/system Be brief.\n"
                                   f"/save {after_reset}\n/bogus\nHi\n")  # then end of input (Ctrl-D)
    assert rc == 0
    saved = json.loads(first.read_text())["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert saved[0]["content"] == "Hello!" and saved[2]["content"] == "What is AI?"
    # the replies are the sampler's greedy replies to the whole conversation so far
    tmpl = ChatTemplate(small_tok)
    ids = tmpl.prompt_ids([Message("user", "Hello!")])
    ref = generate(model, small_tok, [ids], SamplingConfig(max_new_tokens=12, temperature=0), stop_ids=tmpl.stop_ids)
    assert saved[1]["content"] == ref[0].text and f"assistant> {ref[0].text}\n" in out
    assert "(conversation cleared)" in out and "(system prompt set)" in out and "unknown command /bogus" in out
    assert json.loads(after_reset.read_text()) == {"messages": [{"role": "system", "content": "Be brief."}]}
    assert [(m.role, m.content) for m in chat.conversation()][:2] == [("system", "Be brief."), ("user", "Hi")]


class InterruptOnReply(io.StringIO):
    """A terminal on which the user presses Ctrl-C while the first reply is being written."""

    def __init__(self):
        super().__init__()
        self.replies = 0

    def write(self, s: str) -> int:
        if self.getvalue().endswith("assistant> ") and s.strip() and s != " [stopped]\n":
            self.replies += 1
            if self.replies == 1:
                raise KeyboardInterrupt
        return super().write(s)


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(ckpt):
    out = InterruptOnReply()
    rc, _, chat = run_chat(ckpt[0], "Hello!\nWhat is AI?\n", stdout=out)
    text = out.getvalue()
    assert rc == 0 and " [stopped]\n" in text and out.replies == 2
    assert [m.role for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    assert chat.messages[1].content == ""  # nothing was shown before the interrupt


class CtrlCAtPrompt(io.StringIO):
    def readline(self, *a):
        raise KeyboardInterrupt


def test_ctrl_c_at_the_prompt_exits_cleanly(ckpt):
    served = load_served(ckpt[0], device="cpu")
    with Engine(served.model, served.tokenizer) as engine:
        assert TerminalChat(served, engine, GenParams(), stdin=CtrlCAtPrompt(), stdout=io.StringIO()).run() == 0


def test_long_conversations_drop_the_oldest_turns(ckpt):
    rc, out, chat = run_chat(ckpt[0], "".join(f"Hello number {i}, how are you today?\n" for i in range(16)))
    assert rc == 0 and "oldest message" in out
    assert chat.messages[-2].content == "Hello number 15, how are you today?"
    assert len(chat.served.chat_ids(chat.conversation()[:-1])) <= 256 - 12  # the last prompt left room to reply


def test_cli_chat_subprocess_eof_and_sigint(ckpt, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "gptrecipe", "chat", str(ckpt[0]), "-t", "0", "-n", "6", "--device", "cpu"]
    out_file = tmp_path / "conv.json"
    proc = subprocess.run(cmd, input=f"Hello!\n/save {out_file}\n", capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "assistant> " in proc.stdout
    assert [m["role"] for m in json.loads(out_file.read_text())["messages"]] == ["user", "assistant"]
    # Ctrl-C while it waits for input: a clean exit, no traceback
    # the child must take Ctrl-C as a user's terminal would: a runner that started us with SIGINT ignored (a shell's
    # background job does that) would hand the child an ignored SIGINT, and Python then installs no handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        seen = ""
        deadline = time.monotonic() + 60
        while "you> " not in seen and time.monotonic() < deadline:
            seen += p.stdout.read(1)
        p.send_signal(signal.SIGINT)
        try:
            rc = p.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a hang: faulthandler (PYTHONFAULTHANDLER) prints every thread's stack
            p.send_signal(signal.SIGABRT)
            p.wait(timeout=30)
            raise AssertionError(f"no exit 60 s after Ctrl-C (saw {seen!r}); its threads:\n{p.stderr.read()}") from None
        err = p.stderr.read()
    finally:
        p.kill()
    assert rc == 0 and "Traceback" not in err


def test_cli_chat_refuses_a_base_model(tmp_path, small_tok, capsys):
    path, _ = tiny_checkpoint(tmp_path / "pretrain", small_tok, stage="pretrain")
    assert main(["chat", str(path), "--device", "cpu"]) == 2
    assert "base model" in capsys.readouterr().err
