"""`chatforge data augment`: new training records from existing ones through any OpenAI-compatible chat endpoint (a
remote API, or `chatforge serve` itself).

    chatforge data augment --input data.jsonl --output aug.jsonl --base-url http://127.0.0.1:8000/v1 \
        --model NAME --op rephrase [--template my_prompt.txt] [--concurrency 4] [--retries 4]

Operations (one request per record unless noted):
  rephrase   the first user turn rewritten in other words; the rest of the conversation kept
  answer     a new reply to the conversation up to its last user turn (answer generation / distillation)
  follow_up  a follow-up user question, then its answer (two requests): the conversation grows by one round
  closing    a closing user turn (thanks, goodbye), then the assistant's reply to it (two requests)
The prompt for rephrase, follow_up and closing comes from `--template` (a text file with `{text}` = the user turn,
or `{conversation}` = the dialogue as "role: content" lines); answer sends the conversation itself.

Every output line is a chatforge JSONL record with `id` = "<source index>:<op>" and `meta.origin` naming the op, the
model the endpoint says answered, the base URL and the source record; each is checked by the OpenAI-format reader
before it is written. The output is append-only: a rerun reads the ids already there and skips them, so a killed run
continues where it stopped with no record lost or written twice (a half-written last line is cut off first).
Requests are bounded by `--concurrency`; failures (network errors, HTTP 429/5xx, an empty or invalid reply) are
retried with exponential backoff up to `--retries` times, then the record goes to `<output>.failed.jsonl` with its
error and is tried again by the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatforge.data.schema import Conversation, Message
from chatforge.errors import ChatforgeError, DataError

OPS = ("rephrase", "answer", "follow_up", "closing")
DEFAULT_TEMPLATES = {
    "rephrase": (
        "Rewrite the following request in different words, keeping its meaning, language and every detail needed "
        "to answer it. Reply with the rewritten request only.\n\n{text}"
    ),
    "follow_up": (
        "Here is a conversation between a user and an assistant.\n\n{conversation}\n\nWrite the user's next "
        "message: a natural follow-up question in the same language. Reply with that message only."
    ),
    "closing": (
        "Here is a conversation between a user and an assistant.\n\n{conversation}\n\nWrite the user's short "
        "closing message (thanks or goodbye, possibly a last small request) in the same language. Reply with that "
        "message only."
    ),
}
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class RequestFailed(Exception):
    def __init__(self, message: str, retry: bool):
        super().__init__(message)
        self.retry = retry


@dataclass
class AugmentOptions:
    base_url: str
    model: str
    op: str
    template: str | None = None
    api_key: str | None = None
    concurrency: int = 4
    retries: int = 4
    backoff: float = 0.5  # seconds before the first retry; doubled each time, with jitter
    timeout: float = 120.0
    temperature: float = 0.7
    max_tokens: int = 512
    seed: int = 0


def render_conversation(messages: list[Message]) -> str:
    return "\n".join(f"{m.role}: {m.content}" for m in messages if m.role != "system")


def fill_template(template: str, messages: list[Message]) -> str:
    user = next((m.content for m in messages if m.role == "user"), "")
    # str.replace, not str.format: the texts and templates contain braces (code, JSON) that are not fields.
    return template.replace("{text}", user).replace("{conversation}", render_conversation(messages))


def _source_messages(rec: Any) -> list[Message]:
    if not isinstance(rec, Conversation) or not any(m.role == "user" for m in rec.messages):
        raise DataError("augment needs conversations with a user turn (alpaca, sharegpt, openai records)")
    return rec.messages


def read_done(output: Path) -> set[str]:
    """Ids already in the output; a last line without its newline (a killed write) is cut off first."""
    if not output.exists():
        return set()
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with output.open("r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    done = set()
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            done.add(json.loads(line)["id"])
        except (ValueError, KeyError, TypeError) as err:
            raise ChatforgeError(f"{output}, line {n}: not a record written by `data augment` ({err})") from err
    return done


class Client:
    """One OpenAI-compatible /chat/completions caller with bounded retries and exponential backoff."""

    def __init__(self, opts: AugmentOptions):
        try:
            import httpx
        except ImportError as err:
            raise ChatforgeError("chatforge data augment needs httpx: pip install 'chatforge[augment]'") from err
        self.httpx = httpx
        self.opts = opts
        headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
        self.http = httpx.AsyncClient(base_url=opts.base_url.rstrip("/"), headers=headers, timeout=opts.timeout)
        self.rng = random.Random(opts.seed)
        self.stats: Counter = Counter()

    async def close(self) -> None:
        await self.http.aclose()

    async def _once(self, messages: list[dict]) -> tuple[str, str]:
        body = {
            "model": self.opts.model,
            "messages": messages,
            "temperature": self.opts.temperature,
            "max_tokens": self.opts.max_tokens,
        }
        try:
            r = await self.http.post("/chat/completions", json=body)
        except self.httpx.HTTPError as err:
            raise RequestFailed(f"{type(err).__name__}: {err}", retry=True) from err
        if r.status_code != 200:
            raise RequestFailed(f"HTTP {r.status_code}: {r.text[:200]}", retry=r.status_code in RETRY_STATUS)
        try:
            data = r.json()
            text = data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise RequestFailed(f"not an OpenAI chat completion: {r.text[:200]}", retry=True) from err
        if not text.strip():
            raise RequestFailed("empty reply", retry=True)
        return text.strip(), str(data.get("model") or self.opts.model)

    async def chat(self, messages: list[dict]) -> tuple[str, str]:
        """(reply, model name the endpoint reports)."""
        for attempt in range(self.opts.retries + 1):
            self.stats["requests"] += 1
            try:
                return await self._once(messages)
            except RequestFailed as err:
                if not err.retry or attempt == self.opts.retries:
                    raise
                self.stats["retries"] += 1
                delay = self.opts.backoff * 2**attempt
                await asyncio.sleep(delay * (0.5 + self.rng.random()))
        raise AssertionError("unreachable")


def _msg_dicts(messages: list[Message]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages if m.role in ("system", "user", "assistant")]


async def augment_one(client: Client, messages: list[Message], opts: AugmentOptions) -> tuple[list[Message], str]:
    """The new conversation for one source record, and the model that wrote it."""
    op = opts.op
    template = opts.template if opts.template is not None else DEFAULT_TEMPLATES.get(op)
    if op == "rephrase":
        text, model = await client.chat([{"role": "user", "content": fill_template(template, messages)}])
        first = next(k for k, m in enumerate(messages) if m.role == "user")
        new = [Message(m.role, m.content, list(m.tool_calls)) for m in messages]
        new[first] = Message("user", text)
        return new, model
    if op == "answer":
        last = max(k for k, m in enumerate(messages) if m.role == "user")
        prompt = messages[: last + 1]
        if opts.template is not None:  # a template wraps the final user turn
            prompt = [*prompt[:-1], Message("user", fill_template(template, prompt))]
        text, model = await client.chat(_msg_dicts(prompt))
        return [*messages[: last + 1], Message("assistant", text)], model
    # follow_up / closing: first the user's next turn, then the assistant's answer to it.
    if messages[-1].role != "assistant":
        raise DataError(f"{op} needs a conversation that ends with an assistant turn")
    user_text, model = await client.chat([{"role": "user", "content": fill_template(template, messages)}])
    grown = [*messages, Message("user", user_text)]
    reply, model2 = await client.chat(_msg_dicts(grown))
    return [*grown, Message("assistant", reply)], model if model == model2 else f"{model}+{model2}"


def validate_row(row: dict) -> None:
    """Read the row back as chatforge's OpenAI-format reader would; DataError if it would be refused."""
    from chatforge.data.formats import Layout, convert_openai

    convert_openai({"messages": row["messages"]}, Layout.make("openai"))


async def run_augment(records: list[Any], output: Path, opts: AugmentOptions, *, source: str = "") -> dict:
    """Augment every record whose id is not yet in `output`; returns counts for the summary."""
    if opts.op not in OPS:
        raise ChatforgeError(f"--op must be one of {', '.join(OPS)}, not {opts.op!r}")
    if opts.concurrency < 1 or opts.retries < 0:
        raise ChatforgeError("--concurrency must be >= 1 and --retries >= 0")
    output.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(output)
    failed_path = output.with_name(output.name + ".failed.jsonl")
    todo = [(i, rec) for i, rec in enumerate(records) if f"{i}:{opts.op}" not in done]
    counts: Counter = Counter(skipped_done=len(records) - len(todo))
    client = Client(opts)
    sem = asyncio.Semaphore(opts.concurrency)
    failures: list[dict] = []
    t0 = time.perf_counter()
    with output.open("a", encoding="utf-8") as out:

        async def work(i: int, rec: Any) -> None:
            rid = f"{i}:{opts.op}"
            async with sem:
                try:
                    messages, model = await augment_one(client, _source_messages(rec), opts)
                    row = {
                        "id": rid,
                        "messages": [m.to_dict() for m in messages],
                        "meta": {
                            "origin": {
                                "op": opts.op,
                                "model": model,
                                "base_url": opts.base_url,
                                "source": source,
                                "source_index": i,
                            }
                        },
                    }
                    validate_row(row)
                except (RequestFailed, DataError) as err:
                    counts["failed"] += 1
                    failures.append({"id": rid, "source_index": i, "error": str(err)})
                    return
            # One write per line from the single event-loop thread: lines never interleave; flushed so a kill
            # loses at most the lines still in flight, which the next run redoes.
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            counts["written"] += 1

        try:
            await asyncio.gather(*(work(i, rec) for i, rec in todo))
        finally:
            await client.close()
            os.fsync(out.fileno())
    from chatforge.io import atomic_write_text

    if failures:
        atomic_write_text(failed_path, "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in failures))
    elif failed_path.exists():
        failed_path.unlink()  # everything that had failed before went through this time
    return {
        **counts,
        "requests": client.stats["requests"],
        "retries": client.stats["retries"],
        "seconds": round(time.perf_counter() - t0, 3),
        "failed_file": str(failed_path) if failures else None,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="chatforge data augment", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="data file or folder (any format chatforge reads)")
    p.add_argument("--output", required=True, help="JSONL file; appended to, so a rerun resumes")
    p.add_argument("--base-url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True, help="model name sent to the endpoint")
    p.add_argument("--op", choices=OPS, required=True)
    p.add_argument("--template", help="prompt template file ({text} = the user turn, {conversation} = the dialogue)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--retries", type=int, default=4)
    p.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds (doubles each retry)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--limit", type=int, help="only the first N records")
    p.add_argument("--seed", type=int, default=0, help="seeds the retry jitter")
    a = p.parse_args(argv)
    from chatforge.data.readers import read_records
    from chatforge.io import check_not_inside

    out = Path(a.output)
    check_not_inside(out, [a.input], what="--output")
    if out.is_dir():
        raise ChatforgeError(f"--output {out} is a folder; name a .jsonl file")
    template = None
    if a.template:
        tp = Path(a.template)
        if not tp.is_file():
            raise ChatforgeError(f"--template {tp}: no such file")
        template = tp.read_text(encoding="utf-8")
        if a.op != "answer" and "{text}" not in template and "{conversation}" not in template:
            raise ChatforgeError(f"--template {tp} has neither {{text}} nor {{conversation}}")
    res = read_records(a.input)
    print(f"{a.input}: {res.summary()}")
    records = res.records[: a.limit] if a.limit is not None else res.records
    opts = AugmentOptions(
        base_url=a.base_url,
        model=a.model,
        op=a.op,
        template=template,
        api_key=os.environ.get(a.api_key_env),
        concurrency=a.concurrency,
        retries=a.retries,
        backoff=a.backoff,
        timeout=a.timeout,
        temperature=a.temperature,
        max_tokens=a.max_tokens,
        seed=a.seed,
    )
    summary = asyncio.run(run_augment(records, out, opts, source=str(a.input)))
    print(
        f"{a.op}: wrote {summary.get('written', 0)}, already done {summary['skipped_done']}, "
        f"failed {summary.get('failed', 0)} ({summary['requests']} requests, {summary['retries']} retries, "
        f"{summary['seconds']} s) -> {out}"
    )
    if summary.get("failed"):
        print(f"failed records (rerun to retry them): {summary['failed_file']}")
        return 1
    return 0
