"""`chatforge chat`: a streaming multi-turn chat REPL in the terminal (or one scripted answer with --message).

REPL commands: `/reset` clears the history, `/system TEXT` sets the system prompt (and resets), `/exit` quits.
With `--tools FILE.py` the model may call the Python functions in that file: calls are executed, their results are
added as `tool` messages and the model answers again (up to --max-tool-rounds times per user turn).
"""

from __future__ import annotations

import argparse
import sys

from chatforge.data.schema import Conversation, Message
from chatforge.serving.engine import Engine, SamplingParams
from chatforge.serving.toolbox import Toolbox, load_tools


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chatforge chat", description="Chat with a model in the terminal.")
    ap.add_argument("--model", required=True, help="HF folder, .gguf file, or smollm2-135m-instruct")
    ap.add_argument("--adapter", help="a LoRA adapter folder to apply")
    ap.add_argument("--template", help="chat template name (default: the model's own)")
    ap.add_argument("--system", help="system prompt")
    ap.add_argument("--message", help="answer this one message and exit (scriptable)")
    ap.add_argument("--tools", help="a .py file (or module) whose functions the model may call")
    ap.add_argument("--max-tool-rounds", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--dtype", default="auto", help="auto = bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--device", default="auto", help="auto = CUDA when present, else CPU")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 is often fastest on a busy machine)")
    return ap


class ChatSession:
    """The conversation state of one REPL: history, system prompt, tools, and how one user turn is answered."""

    def __init__(
        self, engine: Engine, params: SamplingParams, system: str | None, toolbox: Toolbox | None, rounds: int
    ):
        self.engine, self.params, self.system, self.toolbox, self.rounds = engine, params, system, toolbox, rounds
        self.messages: list[Message] = []

    def reset(self) -> None:
        self.messages = []

    def conversation(self) -> Conversation:
        head = [Message("system", self.system)] if self.system else []
        return Conversation(head + self.messages, list(self.toolbox.specs) if self.toolbox else [])

    def turn(self, text: str, out=None) -> Message:
        """Stream the answer to one user message to `out`, running tool calls in between; returns the final reply."""
        out = out or sys.stdout
        self.messages.append(Message("user", text))
        for round_ in range(self.rounds + 1):
            for delta in self.engine.stream(self.conversation(), self.params):
                out.write(delta)
                out.flush()
            out.write("\n")
            reply = self.engine.completion(self.engine.last_sequence).message
            self.messages.append(reply)
            if not reply.tool_calls or self.toolbox is None:
                return reply
            if round_ == self.rounds:
                break
            for call in reply.tool_calls:
                result = self.toolbox.call(call)
                out.write(f"[tool {call.name} -> {result[:500]}{'...' if len(result) > 500 else ''}]\n")
                self.messages.append(Message("tool", result))
        out.write(f"[stopped after {self.rounds} tool rounds]\n")
        return reply


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=args.stop,
    )
    params.validate()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    toolbox = load_tools(args.tools) if args.tools else None
    engine = Engine.load(args.model, adapter=args.adapter, template=args.template, dtype=args.dtype, device=args.device)
    session = ChatSession(engine, params, args.system, toolbox, args.max_tool_rounds)
    if args.message is not None:
        session.turn(args.message)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("chatforge chat: /reset clears the history, /system TEXT sets the system prompt, /exit quits.")
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            session.reset()
            print("[history cleared]")
            continue
        if text == "/system" or text.startswith("/system "):
            session.system = text[len("/system") :].strip() or None
            session.reset()
            print(f"[system prompt {'set' if session.system else 'cleared'}; history cleared]")
            continue
        if text.startswith("/"):
            print("[unknown command; use /reset, /system TEXT or /exit]")
            continue
        session.turn(text)
