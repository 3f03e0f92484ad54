"""The hotel search tool: filters over a synthetic CrossWOZ-style database, the JSON spec, database selection."""

from __future__ import annotations

import inspect
import json

import pytest

from chatforge.errors import ChatforgeError
from chatforge.tools import hotel
from chatforge.tools.hotel import SEARCH_HOTELS_SPEC, TOOLS, load_hotel_db, query_hotels, search_hotels


def _hotel(name, kind, price, rating, facilities, attractions=(), restaurants=()):
    return [
        name,
        {
            "领域": "酒店",
            "名称": name,
            "酒店类型": kind,
            "地址": f"{name}地址",
            "地铁": "某站",
            "电话": "010-1234",
            "酒店设施": list(facilities),
            "价格": price,
            "评分": rating,
            "周边景点": list(attractions),
            "周边餐馆": list(restaurants),
            "周边酒店": [],
        },
    ]


@pytest.fixture
def db_path(tmp_path):
    rows = [
        _hotel("甲酒店", "经济型", 200, 4.2, ["早餐服务", "吹风机"], ["故宫"]),
        _hotel("乙大酒店", "高档型", 800, 4.7, ["早餐服务免费", "健身房"], ["天坛"], ["全聚德"]),
        _hotel("丙宾馆", "经济型", 350, 4.6, ["吹风机"], ["故宫", "天坛"]),
        _hotel("丁酒店", "豪华型", None, 4.9, ["健身房"]),
    ]
    path = tmp_path / "hotel_db.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def names(result):
    return [h["name"] for h in result["hotels"]]


def test_filters_combine(db_path):
    db = load_hotel_db(db_path)
    assert names(query_hotels(db, hotel_type="经济型")) == ["甲酒店", "丙宾馆"]  # database order
    assert names(query_hotels(db, price_min=300, price_max=900)) == ["乙大酒店", "丙宾馆"]
    assert names(query_hotels(db, rating_min=4.6, price_max=1000)) == ["乙大酒店", "丙宾馆"]  # no price: excluded
    assert names(query_hotels(db, facilities=["早餐服务"])) == ["甲酒店", "乙大酒店"]  # prefix: 早餐服务免费
    assert names(query_hotels(db, facilities=["早餐服务", "健身房"])) == ["乙大酒店"]
    assert names(query_hotels(db, near_attraction="天坛", hotel_type="经济型")) == ["丙宾馆"]
    assert names(query_hotels(db, near_restaurant="全聚德")) == ["乙大酒店"]
    assert names(query_hotels(db, name="酒店")) == ["甲酒店", "乙大酒店", "丁酒店"]
    none = query_hotels(db, hotel_type="豪华型", price_max=100)
    assert none == {"count": 0, "hotels": []}


def test_limit_count_and_detail(db_path):
    db = load_hotel_db(db_path)
    r = query_hotels(db, limit=2)
    assert r["count"] == 4 and len(r["hotels"]) == 2
    one = query_hotels(db, name="丙宾馆")
    assert one["hotels"][0]["nearby_attractions"] == ["故宫", "天坛"]  # few results carry nearby places
    assert "nearby_attractions" not in query_hotels(db, limit=5)["hotels"][0]


def test_exact_name_first(db_path):
    db = load_hotel_db(db_path)
    assert names(query_hotels(db, name="乙大酒店"))[0] == "乙大酒店"


def test_bad_type_is_reported_not_silently_empty(db_path):
    r = query_hotels(load_hotel_db(db_path), hotel_type="五星级")
    assert "error" in r and "经济型" in r["error"]


def test_search_hotels_uses_configured_database(db_path, monkeypatch):
    monkeypatch.setattr(hotel, "_db_path", None)
    monkeypatch.delenv("CHATFORGE_HOTEL_DB", raising=False)
    with pytest.raises(ChatforgeError, match="CHATFORGE_HOTEL_DB"):
        search_hotels(hotel_type="经济型")
    monkeypatch.setenv("CHATFORGE_HOTEL_DB", str(db_path))
    assert names(search_hotels(hotel_type="经济型")) == ["甲酒店", "丙宾馆"]
    monkeypatch.delenv("CHATFORGE_HOTEL_DB")
    hotel.use_database(db_path)
    assert search_hotels(rating_min=4.8)["count"] == 1


def test_spec_matches_function_signature():
    params = set(inspect.signature(search_hotels).parameters)
    assert set(SEARCH_HOTELS_SPEC["parameters"]["properties"]) == params
    assert TOOLS == [SEARCH_HOTELS_SPEC] and search_hotels.__doc__


def test_missing_database_file(tmp_path):
    with pytest.raises(ChatforgeError, match="not found"):
        load_hotel_db(tmp_path / "nope.json")
