"""Fictional grounded-QA data for the demo: answer from the context, or say you cannot tell.

Entities, names and facts are invented, so a model cannot know the answers from pretraining. Every example is a
context (a few sentences about the asked-about entity and often a second, distractor entity) plus a question.

- answerable: the context states the asked attribute of the asked entity (a distractor may state the same attribute
  of another entity with a different value: the model must pick the right one);
- unanswerable: the context talks about the entity but not the asked attribute. In "hard" examples the distractor
  entity has that attribute, so a model that only checks "is this attribute mentioned?" answers wrongly.

Training and held-out test sets use disjoint sentence and question phrasings (`split="train"` / `"test"`); the test
set is all-hard. `chatforge data demo --output DIR` writes both as JSONL conversations.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

from chatforge.data.convert.common import write_jsonl
from chatforge.data.schema import Conversation, Message

SYSTEM_PROMPT = (
    "Answer the question using only the context. If the context does not say, reply that you cannot tell from "
    "the context."
)

REFUSALS = [
    "I can't tell from the context.",
    "The context does not say.",
    "The context doesn't mention that.",
    "I cannot answer that from the given context.",
    "That information is not in the context.",
    "The provided text does not include this information.",
    "I don't know based on the context.",
    "There is no information about that in the context.",
    "The context does not provide the answer.",
    "Sorry, the context doesn't contain that information.",
    "I'm unable to find that in the context.",
    "The context gives no answer to this question.",
]

ANSWER_FORMS = ["{value}.", "The answer is {value}.", "According to the context, {value}.", "{value}, per the context."]

_SYLLABLES = ["val", "tor", "bren", "nick", "quor", "vane", "zel", "mar", "oth", "ira", "dun", "sky", "pel", "ka", "ro"]
_SYLLABLES += ["fen", "lith", "gar", "mo", "sel", "tav", "ul", "bex", "cor", "den", "eth", "hal", "jor", "lun", "nai"]
_COLOURS = ["teal", "crimson", "amber", "violet", "ochre", "silver", "olive", "indigo", "coral", "ivory"]
_FOODS = ["smoked eel", "plum dumplings", "barley soup", "fig bread", "pepper stew", "honey cakes", "lentil pie"]
_JOBS = ["clockmaker", "cartographer", "glassblower", "astronomer", "beekeeper", "bookbinder", "shipwright"]
_PRODUCTS = ["water pumps", "paper lanterns", "bicycle bells", "wool blankets", "copper kettles", "ice skates"]

# attribute -> (value maker, {split: sentence templates}, {split: question templates})
# `{e}` is the entity name, `{v}` the value.
Attribute = tuple


def _name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _town(rng: random.Random) -> str:
    return _name(rng, 2) + rng.choice(["ford", "holm", "by", "stead", "mouth", "wick"])


ENTITY_KINDS: dict[str, dict] = {
    "company": {
        "name": lambda rng: _name(rng, 2) + " " + rng.choice(["Works", "Industries", "Company", "Guild"]),
        "attrs": {
            "founded": (
                lambda rng: str(rng.randint(1801, 1999)),
                {
                    "train": ["{e} was founded in {v}.", "{e} opened its doors in {v}."],
                    "test": ["The year {e} began trading was {v}.", "Records show {e} was established in {v}."],
                },
                {
                    "train": ["When was {e} founded?", "In what year was {e} founded?"],
                    "test": ["Which year did {e} start out?", "What is the founding year of {e}?"],
                },
            ),
            "headquarters": (
                _town,
                {
                    "train": ["{e} has its headquarters in {v}.", "{e} is based in {v}."],
                    "test": ["The head office of {e} sits in {v}.", "{e} runs its business from {v}."],
                },
                {
                    "train": ["Where is {e} based?", "Where are the headquarters of {e}?"],
                    "test": ["In which town is the head office of {e}?", "From which town does {e} operate?"],
                },
            ),
            "product": (
                lambda rng: rng.choice(_PRODUCTS),
                {
                    "train": ["{e} makes {v}.", "{e} is known for producing {v}."],
                    "test": ["Most of what {e} sells is {v}.", "The factory floor of {e} turns out {v}."],
                },
                {
                    "train": ["What does {e} make?", "What product is {e} known for?"],
                    "test": ["What goods come out of {e}?", "Which product does {e} sell?"],
                },
            ),
            "employees": (
                lambda rng: str(rng.randint(12, 9000)),
                {
                    "train": ["{e} employs {v} people.", "{e} has {v} employees."],
                    "test": ["The staff of {e} numbers {v}.", "A workforce of {v} keeps {e} running."],
                },
                {
                    "train": ["How many people does {e} employ?", "How many employees does {e} have?"],
                    "test": ["What is the size of the workforce at {e}?", "How large is the staff of {e}?"],
                },
            ),
        },
    },
    "person": {
        "name": lambda rng: _name(rng, 2) + " " + _name(rng, 2),
        "attrs": {
            "born": (
                lambda rng: str(rng.randint(1700, 1990)),
                {
                    "train": ["{e} was born in {v}.", "{e} came into the world in {v}."],
                    "test": ["The birth year of {e} is recorded as {v}.", "Parish books list {e} as born in {v}."],
                },
                {
                    "train": ["When was {e} born?", "In what year was {e} born?"],
                    "test": ["What year marks the birth of {e}?", "Which year did {e} first see daylight?"],
                },
            ),
            "job": (
                lambda rng: rng.choice(_JOBS),
                {
                    "train": ["{e} worked as a {v}.", "{e} earned a living as a {v}."],
                    "test": ["By trade, {e} was a {v}.", "Neighbours knew {e} as the local {v}."],
                },
                {
                    "train": ["What did {e} work as?", "What was the job of {e}?"],
                    "test": ["Which trade did {e} follow?", "How did {e} make a living?"],
                },
            ),
            "colour": (
                lambda rng: rng.choice(_COLOURS),
                {
                    "train": ["The favourite colour of {e} was {v}.", "{e} loved the colour {v}."],
                    "test": ["Of all colours, {e} preferred {v}.", "{e} painted every door {v}, a beloved colour."],
                },
                {
                    "train": ["What was the favourite colour of {e}?", "Which colour did {e} love?"],
                    "test": ["Which colour did {e} prefer above others?", "What colour did {e} like best?"],
                },
            ),
            "hometown": (
                _town,
                {
                    "train": ["{e} grew up in {v}.", "{e} was raised in {v}."],
                    "test": ["The childhood home of {e} was {v}.", "{e} spent early years in {v}."],
                },
                {
                    "train": ["Where did {e} grow up?", "In which town was {e} raised?"],
                    "test": ["What town was the childhood home of {e}?", "Where did {e} spend the early years?"],
                },
            ),
        },
    },
    "town": {
        "name": _town,
        "attrs": {
            "population": (
                lambda rng: str(rng.randint(300, 90000)),
                {
                    "train": ["{e} has a population of {v}.", "{v} people live in {e}."],
                    "test": ["The census counts {v} residents in {e}.", "{e} is home to {v} inhabitants."],
                },
                {
                    "train": ["What is the population of {e}?", "How many people live in {e}?"],
                    "test": ["How many residents does {e} have?", "What head count did the census give for {e}?"],
                },
            ),
            "dish": (
                lambda rng: rng.choice(_FOODS),
                {
                    "train": ["{e} is famous for its {v}.", "The local speciality of {e} is {v}."],
                    "test": ["Visitors to {e} always order {v}.", "No feast in {e} lacks {v}."],
                },
                {
                    "train": ["What is {e} famous for eating?", "What is the local speciality of {e}?"],
                    "test": ["Which dish do visitors order in {e}?", "What food belongs at every feast in {e}?"],
                },
            ),
            "river": (
                lambda rng: "the " + _name(rng, 2) + " river",
                {
                    "train": ["{e} lies on {v}.", "{v} flows through {e}."],
                    "test": ["Boats reach {e} along {v}.", "The banks of {v} hold the old port of {e}."],
                },
                {
                    "train": ["Which river flows through {e}?", "On which river does {e} lie?"],
                    "test": ["Along which river do boats reach {e}?", "What river passes the port of {e}?"],
                },
            ),
            "mayor": (
                lambda rng: _name(rng, 2) + " " + _name(rng, 2),
                {
                    "train": ["The mayor of {e} is {v}.", "{v} serves as mayor of {e}."],
                    "test": ["{e} elected {v} to lead its council.", "Town hall in {e} is run by mayor {v}."],
                },
                {
                    "train": ["Who is the mayor of {e}?", "Who serves as mayor of {e}?"],
                    "test": ["Who leads the council of {e}?", "Who runs the town hall in {e}?"],
                },
            ),
        },
    },
}


@dataclass
class QAExample:
    context: str
    question: str
    answer: str | None  # None: unanswerable
    kind: str  # answerable | unanswerable
    hard: bool  # a distractor entity states the asked attribute

    def conversation(self, rng: random.Random | None = None, reply: str | None = None) -> Conversation:
        messages = [
            Message("system", SYSTEM_PROMPT),
            Message("user", f"Context: {self.context}\n\nQuestion: {self.question}"),
        ]
        if reply is not None:
            messages.append(Message("assistant", reply))
        meta = {"answer": self.answer, "kind": self.kind, "hard": self.hard}
        return Conversation(messages, meta=meta)


def _facts(rng: random.Random, kind: str) -> tuple[str, dict[str, str]]:
    spec = ENTITY_KINDS[kind]
    return spec["name"](rng), {a: make(rng) for a, (make, _, _) in spec["attrs"].items()}


def _sentence(rng: random.Random, kind: str, attr: str, entity: str, value: str, split: str) -> str:
    text = rng.choice(ENTITY_KINDS[kind]["attrs"][attr][1][split]).format(e=entity, v=value)
    return text[0].upper() + text[1:]


def make_example(rng: random.Random, split: str, answerable: bool, hard: bool) -> QAExample:
    """One example. `hard`: a second entity of the same kind states the asked attribute (with its own value)."""
    kind = rng.choice(sorted(ENTITY_KINDS))
    attrs = sorted(ENTITY_KINDS[kind]["attrs"])
    asked = rng.choice(attrs)
    entity, facts = _facts(rng, kind)
    other_entity, other_facts = _facts(rng, kind)
    while other_entity == entity or other_facts[asked] == facts[asked]:
        other_entity, other_facts = _facts(rng, kind)
    others = [a for a in attrs if a != asked]
    mentioned = rng.sample(others, rng.randint(1, 2)) + ([asked] if answerable else [])
    sentences = [_sentence(rng, kind, a, entity, facts[a], split) for a in mentioned]
    distractor_attrs = ([asked] if hard else []) + rng.sample(others, rng.randint(0, 1))
    sentences += [_sentence(rng, kind, a, other_entity, other_facts[a], split) for a in distractor_attrs]
    rng.shuffle(sentences)
    question = rng.choice(ENTITY_KINDS[kind]["attrs"][asked][2][split]).format(e=entity)
    return QAExample(
        context=" ".join(sentences),
        question=question,
        answer=facts[asked] if answerable else None,
        kind="answerable" if answerable else "unanswerable",
        hard=hard,
    )


def reference_reply(example: QAExample, rng: random.Random) -> str:
    if example.answer is None:
        return rng.choice(REFUSALS)
    return rng.choice(ANSWER_FORMS).format(value=example.answer)


def make_split(n: int, split: str, seed: int, hard_fraction: float) -> list[QAExample]:
    """`n` examples, half answerable, half not; `hard_fraction` of each half has a distractor with the attribute."""
    rng = random.Random(f"{seed}-{split}")
    examples = []
    for i in range(n):
        answerable = i % 2 == 0
        examples.append(make_example(rng, split, answerable, hard=rng.random() < hard_fraction))
    rng.shuffle(examples)
    return examples


def build_demo_sets(n_train: int = 600, n_test: int = 120, seed: int = 0) -> tuple[list[Conversation], list[QAExample]]:
    """Training conversations (with replies) and held-out test examples (new phrasings, all with distractors)."""
    rng = random.Random(seed)
    train = [ex.conversation(reply=reference_reply(ex, rng)) for ex in make_split(n_train, "train", seed, 0.6)]
    test = make_split(n_test, "test", seed, 1.0)
    return train, test


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="chatforge data demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", required=True, help="folder for train.jsonl and test.jsonl")
    ap.add_argument("--train", type=int, default=600, help="training conversations")
    ap.add_argument("--test", type=int, default=120, help="held-out test questions (new phrasings, distractors)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    train, test = build_demo_sets(args.train, args.test, args.seed)
    out = Path(args.output)
    write_jsonl(out / "train.jsonl", train)
    rng = random.Random(args.seed + 1)
    write_jsonl(out / "test.jsonl", [ex.conversation(reply=reference_reply(ex, rng)) for ex in test])
    print(f"wrote {len(train)} training and {len(test)} test conversations to {out}")
    return 0
