"""CrossWOZ -> tool-calling conversations for a hotel-booking assistant (`chatforge data convert crosswoz`).

For every dialogue that touches the hotel domain, each hotel round (user turn + system turn) becomes: the user's
words; when the round needs data, an assistant `search_hotels` call whose arguments come from the dialogue state the
annotators recorded for that turn (`sys_state_init`: name, type, price and rating ranges, facilities, nearby places);
the call executed against `hotel_db.json` (the observation is a real query result); then the system's reply. Rounds of
other domains (restaurants, attractions, metro, taxi) are left out because the assistant has no tool for them, and the
report counts them. Two output styles: `dialogues.jsonl` (all rounds in one sample, every assistant turn trained in one
pass) and `rounds.jsonl` (one sample per round; earlier assistant turns are history with `train: false`).
"""

from __future__ import annotations

import argparse
import json
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from chatforge.data.convert.common import check_output, write_jsonl, write_report
from chatforge.data.schema import Conversation, Message, ToolCall
from chatforge.errors import ChatforgeError, DataError, NotSupportedError
from chatforge.tools.hotel import HOTEL_TYPES, SEARCH_HOTELS_SPEC, load_hotel_db, query_hotels

DOMAIN = "酒店"
SYSTEM_PROMPT = (
    "你是北京的酒店预订助手。需要酒店信息时调用 search_hotels 工具查询，只根据查询结果回答；"
    "没有符合条件的酒店时如实告诉用户。"
)
# Which observation field answers a user's request for a hotel attribute (CrossWOZ slot -> tool result key).
SLOT_FIELDS = {
    "名称": "name",
    "酒店类型": "type",
    "价格": "price",
    "评分": "rating",
    "地址": "address",
    "地铁": "metro",
    "电话": "phone",
    "周边景点": "nearby_attractions",
    "周边餐馆": "nearby_restaurants",
    "周边酒店": "nearby_hotels",
}


def load_dialogues(path: str | Path) -> dict[str, Any]:
    """Read CrossWOZ's `{id: dialogue}` JSON, plain or zipped (the release ships `val.json.zip`)."""
    path = Path(path)
    if not path.exists():
        raise ChatforgeError(f"input file not found: {path}")
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith(".json")]
                if not names:
                    raise DataError("zip archive holds no .json file", file=str(path))
                data = json.loads(zf.read(names[0]))
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON: {err.msg}", file=str(path), line=err.lineno) from None
    except (RecursionError, ValueError) as err:  # too deep, a number of thousands of digits, not UTF-8
        raise DataError(f"cannot parse JSON: {str(err).split(':')[0][:100]}", file=str(path)) from None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(f"cannot read the archive: {err}", file=str(path)) from None
    if not isinstance(data, dict):
        raise DataError("expected a JSON object {dialogue_id: dialogue}", file=str(path))
    return data


def _number(text: str) -> float | None:
    m = re.search(r"\d+(?:\.\d+)?", text)
    return float(m.group()) if m else None


def state_to_arguments(state: dict[str, Any], problems: Counter) -> dict[str, Any]:
    """CrossWOZ hotel state (Chinese slot -> value string) -> `search_hotels` arguments."""
    args: dict[str, Any] = {}
    if state.get("名称"):
        # A named hotel identifies the result; the earlier search constraints no longer matter.
        return {"name": state["名称"].strip()}
    kind = re.sub(r"[^\u4e00-\u9fff]", "", state.get("酒店类型") or "")
    if kind:
        kind = kind if kind.endswith("型") else kind + "型"
        if kind in HOTEL_TYPES:
            args["hotel_type"] = kind
        else:
            problems["unknown hotel type in state"] += 1
    price = (state.get("价格") or "").strip()
    if price:
        nums = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", price)]
        if len(nums) >= 2:
            args["price_min"], args["price_max"] = nums[0], nums[1]
        elif nums and "以下" in price:
            args["price_max"] = nums[0]
        elif nums:
            args["price_min"] = nums[0]
        else:
            problems["unparsed price"] += 1
    rating = (state.get("评分") or "").strip()
    if rating:
        value = _number(rating)
        if value is None:
            problems["unparsed rating"] += 1
        else:
            args["rating_min"] = value
    facilities = (state.get("酒店设施") or "").split()
    if facilities:
        args["facilities"] = facilities
    if state.get("周边景点"):
        args["near_attraction"] = state["周边景点"].strip()
    if state.get("周边餐馆"):
        args["near_restaurant"] = state["周边餐馆"].strip()
    if state.get("周边酒店"):
        problems["near-hotel constraint ignored"] += 1
    return args


def _hotel_names(acts: list[list[str]]) -> list[str]:
    return [a[3] for a in acts if a[1] == DOMAIN and a[2] == "名称" and a[0] in ("Inform", "Recommend") and a[3]]


def _requested_fields(acts: list[list[str]]) -> set[str]:
    fields = set()
    for intent, domain, slot, _ in acts:
        if domain == DOMAIN and intent == "Request":
            fields.add("facilities" if slot.startswith("酒店设施") else SLOT_FIELDS.get(slot, slot))
    return fields


def convert_dialogue(
    did: str, dialogue: dict[str, Any], db: list[dict], stats: Counter, source: str | None = None
) -> list[dict[str, Any]]:
    """The kept rounds of one dialogue: [{"user", "call" (args or None), "result", "reply", "grounded"}]."""
    msgs = dialogue.get("messages")
    if not isinstance(msgs, list):
        raise DataError("dialogue has no 'messages' list", file=source, record=did, field="messages")
    rounds: list[dict[str, Any]] = []
    last_args: dict | None = None
    current: str | None = None  # the hotel the conversation is about (the last one the system named)
    shown: dict[str, set[str]] = {}  # hotel name -> observation fields already in the conversation
    for i in range(0, len(msgs) - 1, 2):
        usr, sys_ = msgs[i], msgs[i + 1]
        if usr.get("role") != "usr" or sys_.get("role") != "sys":
            raise DataError("expected alternating usr/sys turns", file=source, record=did, field=f"messages[{i}]")
        u_acts, s_acts = usr.get("dialog_act", []), sys_.get("dialog_act", [])
        hotel_round = any(a[1] == DOMAIN for a in u_acts + s_acts)
        general_only = bool(u_acts) and all(a[0] == "General" for a in u_acts)
        if not hotel_round and not general_only:
            stats["rounds of other domains left out"] += 1
            continue
        call = result = None
        grounded = True
        if hotel_round:
            args = state_to_arguments(sys_.get("sys_state_init", {}).get(DOMAIN, {}), stats)
            wanted = _requested_fields(u_acts)
            if args and args != last_args:
                call = args
            elif current and wanted and not wanted <= shown.get(current, set()):
                call = {"name": current}
            if call is not None:
                result = query_hotels(db, **call)
                last_args = call
                for h in result["hotels"]:
                    shown.setdefault(h["name"], set()).update(k for k, v in h.items() if v is not None)
                stats["tool calls"] += 1
                stats["tool calls with no result"] += result["count"] == 0
            named = _hotel_names(s_acts)
            stats["replies naming a hotel"] += bool(named)
            if any(name not in shown for name in named):
                # The wizard picked a hotel the search above did not show (or relaxed the constraints): training on
                # this reply would teach inventing hotels, so it stays as context only.
                grounded = False
                stats["replies naming a hotel no observation showed (kept untrained)"] += 1
            selected = sys_.get("sys_state", {}).get(DOMAIN, {}).get("selectedResults") or named
            if selected:
                current = selected[0]
        rounds.append(
            {
                "user": usr.get("content", ""),
                "call": call,
                "result": result,
                "reply": sys_.get("content", ""),
                "grounded": grounded,
            }
        )
    return rounds


def _round_messages(r: dict[str, Any], train: bool | None) -> list[Message]:
    out = [Message("user", r["user"])]
    if r["call"] is not None:
        out.append(Message("assistant", "", tool_calls=[ToolCall("search_hotels", r["call"])], train=train))
        out.append(Message("tool", json.dumps(r["result"], ensure_ascii=False)))
    out.append(Message("assistant", r["reply"], train=train if r["grounded"] else False))
    return out


def build_conversations(did: str, rounds: list[dict[str, Any]]) -> tuple[Conversation, list[Conversation]]:
    """The whole-dialogue sample and the per-round samples of one dialogue."""
    system = Message("system", SYSTEM_PROMPT)
    n_calls = sum(r["call"] is not None for r in rounds)
    whole = Conversation(
        [system] + [m for r in rounds for m in _round_messages(r, None)],
        tools=[SEARCH_HOTELS_SPEC],
        meta={"source": "crosswoz", "dialogue_id": did, "rounds": len(rounds), "tool_calls": n_calls},
    )
    per_round = []
    for k, r in enumerate(rounds):
        if r["call"] is None and not r["grounded"]:
            continue  # its only reply is untrained context: a per-round sample would train nothing
        history = [m for prev in rounds[:k] for m in _round_messages(prev, False)]
        per_round.append(
            Conversation(
                [system] + history + _round_messages(r, None),
                tools=[SEARCH_HOTELS_SPEC],
                meta={"source": "crosswoz", "dialogue_id": did, "round": k, "tool_call": r["call"] is not None},
            )
        )
    return whole, per_round


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="chatforge data convert crosswoz", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="CrossWOZ dialogues (val.json.zip, train.json, ...)")
    p.add_argument("--db", required=True, help="CrossWOZ hotel_db.json")
    p.add_argument("--domain", default="hotel", help="only 'hotel' is supported")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--style", choices=["both", "dialogue", "round"], default="both")
    a = p.parse_args(argv)
    if a.domain != "hotel":
        raise NotSupportedError(f"--domain {a.domain!r}: only 'hotel' has a tool (search_hotels) so far")
    out = check_output(a.output, a.input, a.db)
    data = load_dialogues(a.input)
    db = load_hotel_db(a.db)
    stats: Counter = Counter()
    dialogues, rounds_out = [], []
    for did in sorted(data, key=lambda k: (len(k), k)):
        dialogue = data[did]
        if not any(g[1] == DOMAIN for g in dialogue.get("goal", [])):
            stats["dialogues without the hotel domain"] += 1
            continue
        rounds = convert_dialogue(did, dialogue, db, stats, source=str(a.input))
        if not any(r["call"] for r in rounds):
            stats["hotel dialogues without any tool call left out"] += 1
            continue
        whole, per_round = build_conversations(did, rounds)
        dialogues.append(whole)
        rounds_out.extend(per_round)
    if not dialogues:
        raise DataError("no dialogue touches the hotel domain", file=a.input)
    files = {}
    if a.style in ("both", "dialogue"):
        files["dialogues"] = write_jsonl(out / "dialogues.jsonl", dialogues)
    if a.style in ("both", "round"):
        files["rounds"] = write_jsonl(out / "rounds.jsonl", rounds_out)
    report = {
        "converter": "crosswoz",
        "input": str(a.input),
        "db": str(a.db),
        "dialogues_read": len(data),
        "dialogues_written": len(dialogues),
        "dialogues_with_tool_calls": sum(c.meta["tool_calls"] > 0 for c in dialogues),
        "rounds_written": len(rounds_out),
        "rounds_left_out_with_nothing_to_train": sum(c.meta["rounds"] for c in dialogues) - len(rounds_out),
        "rounds_with_tool_call": sum(c.meta["tool_call"] for c in rounds_out),
        "files": files,
        "counts": dict(sorted(stats.items())),
    }
    write_report(out, report)
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0
