"""CrossWOZ -> hotel tool-calling conversations, on a tiny synthetic dialogue and database."""

from __future__ import annotations

import json
import zipfile

import pytest

from chatforge.data.convert import main as convert_main
from chatforge.data.convert.crosswoz import state_to_arguments
from chatforge.data.readers import read_records
from chatforge.errors import NotSupportedError

EMPTY = {
    "名称": "",
    "酒店类型": "",
    "酒店设施": "",
    "价格": "",
    "评分": "",
    "周边景点": "",
    "周边餐馆": "",
    "周边酒店": "",
}


def hotel_row(name, kind, price, rating, facilities):
    return [
        name,
        {
            "名称": name,
            "酒店类型": kind,
            "地址": "北京",
            "地铁": "站",
            "电话": "010",
            "酒店设施": facilities,
            "价格": price,
            "评分": rating,
            "周边景点": ["故宫"],
            "周边餐馆": [],
            "周边酒店": [],
        },
    ]


def sys_state(hotel: dict, selected: list[str]) -> dict:
    return {"酒店": {**EMPTY, **hotel, "selectedResults": selected}, "餐馆": {"selectedResults": []}}


def turn(role, content, acts, state=None, selected=()):
    t = {"role": role, "content": content, "dialog_act": acts}
    if role == "sys":
        t["sys_state_init"] = sys_state(state or {}, list(selected))
        t["sys_state"] = sys_state(state or {}, list(selected))
    return t


DIALOGUE = {
    "goal": [[1, "酒店", "价格", "100-300元", False], [2, "餐馆", "名称", "", False]],
    "messages": [
        turn(
            "usr",
            "你好，帮我找个100-300元的经济型酒店，要有吹风机。",
            [
                ["Inform", "酒店", "价格", "100-300元"],
                ["Inform", "酒店", "酒店类型", "经济型"],
                ["Inform", "酒店", "酒店设施-吹风机", "是"],
                ["Request", "酒店", "名称", ""],
            ],
        ),
        turn(
            "sys",
            "推荐甲酒店。",
            [["Recommend", "酒店", "名称", "甲酒店"]],
            {"价格": "100-300元", "酒店类型": "经济型", "酒店设施": "吹风机"},
            ["甲酒店"],
        ),
        turn("usr", "附近有什么餐馆？", [["Request", "餐馆", "名称", ""]]),
        turn("sys", "有全聚德。", [["Inform", "餐馆", "名称", "全聚德"]]),
        turn("usr", "甲酒店周边有什么景点？", [["Request", "酒店", "周边景点", ""]]),
        turn(
            "sys",
            "有故宫。",
            [["Inform", "酒店", "周边景点", "故宫"]],
            {"价格": "100-300元", "酒店类型": "经济型", "酒店设施": "吹风机"},
            ["甲酒店"],
        ),
        turn(
            "usr",
            "有5分的豪华型酒店吗？",
            [["Inform", "酒店", "评分", "5分"], ["Inform", "酒店", "酒店类型", "豪华型"]],
        ),
        turn(
            "sys",
            "没有，不过可以试试幻想酒店。",
            [["NoOffer", "酒店", "none", "none"], ["Recommend", "酒店", "名称", "幻想酒店"]],
            {"评分": "5分", "酒店类型": "豪华型"},
            [],
        ),
        turn("usr", "谢谢，再见。", [["General", "thank", "none", "none"]]),
        turn("sys", "不客气。", [["General", "welcome", "none", "none"]]),
    ],
}


@pytest.fixture
def files(tmp_path):
    db = tmp_path / "hotel_db.json"
    db.write_text(
        json.dumps(
            [
                hotel_row("甲酒店", "经济型", 200, 4.5, ["吹风机"]),
                hotel_row("乙酒店", "经济型", 250, 4.0, ["早餐服务"]),
            ],
            ensure_ascii=False,
        ),
        "utf-8",
    )
    data = {"1": DIALOGUE, "2": {"goal": [[1, "景点", "名称", "", False]], "messages": []}}
    src = tmp_path / "val.json.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("val.json", json.dumps(data, ensure_ascii=False))
    return src, db


def run(files, out, *extra):
    src, db = files
    assert convert_main(["crosswoz", "--input", str(src), "--db", str(db), "--output", str(out), *extra]) == 0
    return json.loads((out / "report.json").read_text("utf-8"))


def test_state_to_arguments_parses_ranges_and_types():
    problems = __import__("collections").Counter()
    args = state_to_arguments(
        {
            "价格": "1000元以上",
            "评分": "4.5分以上",
            "酒店类型": "高档",
            "酒店设施": "早餐服务 健身房",
            "周边景点": "故宫",
        },
        problems,
    )
    assert args == {
        "price_min": 1000.0,
        "rating_min": 4.5,
        "hotel_type": "高档型",
        "facilities": ["早餐服务", "健身房"],
        "near_attraction": "故宫",
    }
    assert state_to_arguments({"名称": "甲酒店", "价格": "100-200元"}, problems) == {"name": "甲酒店"}
    assert state_to_arguments({"酒店类型": "商务中心"}, problems) == {} and problems["unknown hotel type in state"] == 1


def test_dialogue_style_has_real_observations_and_masks(files, tmp_path):
    report = run(files, tmp_path / "out")
    assert report["dialogues_written"] == 1 and report["counts"]["dialogues without the hotel domain"] == 1
    assert report["counts"]["rounds of other domains left out"] == 1
    (conv,) = read_records(tmp_path / "out" / "dialogues.jsonl").records
    roles = [m.role for m in conv.messages]
    assert roles[:5] == ["system", "user", "assistant", "tool", "assistant"]
    call = conv.messages[2].tool_calls[0]
    assert call.name == "search_hotels"
    assert call.arguments == {"hotel_type": "经济型", "price_min": 100.0, "price_max": 300.0, "facilities": ["吹风机"]}
    observation = json.loads(conv.messages[3].content)
    assert observation["count"] == 1 and observation["hotels"][0]["name"] == "甲酒店"  # executed against the db
    assert conv.tools[0]["name"] == "search_hotels"
    texts = [m.content for m in conv.messages]
    assert "有全聚德。" not in texts  # the restaurant round has no tool: left out
    # The nearby-attractions question needs no new call (the one-hotel observation already lists nearby places);
    # the no-offer round gets a real empty result, and its reply names a hotel no search returned: untrained context.
    assert conv.meta["tool_calls"] == 2
    no_offer = [m for m in conv.messages if m.role == "tool" and json.loads(m.content)["count"] == 0]
    assert no_offer
    invented = next(m for m in conv.messages if m.content.startswith("没有，不过"))
    assert invented.train is False
    assert conv.messages[-1].content == "不客气。" and conv.messages[-1].train is None


def test_round_style_history_untrained(files, tmp_path):
    report = run(files, tmp_path / "out", "--style", "round")
    rounds = read_records(tmp_path / "out" / "rounds.jsonl").records
    assert len(rounds) == report["rounds_written"] == 4
    last = rounds[-1]
    history_assistant = [m for m in last.messages[:-1] if m.role == "assistant"]
    assert history_assistant and all(m.train is False for m in history_assistant)
    assert last.messages[-1].train is None  # the round's own reply is trained by the mask
    assert not (tmp_path / "out" / "dialogues.jsonl").exists()


def test_deterministic(files, tmp_path):
    run(files, tmp_path / "a")
    run(files, tmp_path / "b")
    assert (tmp_path / "a" / "rounds.jsonl").read_bytes() == (tmp_path / "b" / "rounds.jsonl").read_bytes()


def test_other_domains_not_supported(files, tmp_path):
    with pytest.raises(NotSupportedError, match="hotel"):
        run(files, tmp_path / "out", "--domain", "restaurant")


def test_malformed_dialogue_is_located(files, tmp_path):
    from chatforge.errors import DataError

    src, db = files
    bad = {"7": {"goal": DIALOGUE["goal"], "messages": [DIALOGUE["messages"][0], DIALOGUE["messages"][0]]}}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.json, record 7, field 'messages\[0\]'"):
        convert_main(["crosswoz", "--input", str(path), "--db", str(db), "--output", str(tmp_path / "o")])
