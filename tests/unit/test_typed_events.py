"""The typed events reader: the Taobao layout, sessions, and clear errors for bad lines."""

from __future__ import annotations

import pytest

from streamrec.typed_events import by_user, parse_lines, read_events, sessions, write_events

HEAD = "user_id,item_id,category_id,behavior,ts"
T = 1_511_544_000  # 2017-11-24


def test_reads_taobao_and_streamrec_names_in_time_order():
    evs = parse_lines(
        [HEAD, f"u1,i2,c,buy,{T + 200}", f"u1,i1,c,pv,{T + 100}", f"u1,i3,c,fav,{T + 150}", f"u2,i1,c,add_to_cart,{T}"]
    )
    users = by_user(evs)
    assert [e.item_id for e in users["u1"]] == ["i1", "i3", "i2"]
    assert [(e.type, e.raw) for e in users["u1"]] == [("view", "view"), ("view", "favorite"), ("purchase", "purchase")]
    assert users["u2"][0].type == "add_to_cart"


def test_sessions_split_at_thirty_minutes():
    evs = by_user(parse_lines([HEAD, f"u,a,c,pv,{T}", f"u,b,c,pv,{T + 1800}", f"u,c,c,pv,{T + 3601}"]))["u"]
    assert [len(s) for s in sessions(evs)] == [2, 1]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (f"u1,i1,c,zoom,{T}", "behavior"),
        ("u1,i1,c,pv,soon", "ts"),
        ("u1,i1,c,pv,99999999999", "outside"),
        (f"u1,i1,pv,{T}", "5 comma-separated"),
        (f"u 1,i1,c,pv,{T}", "user_id"),
    ],
)
def test_bad_lines_name_the_line(line, match):
    with pytest.raises(ValueError, match=match) as info:
        parse_lines([HEAD, f"u1,i1,c,pv,{T}", line], source="f.csv")
    assert "f.csv:3" in str(info.value)


def test_header_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="header"):
        parse_lines(["a,b,c", f"u,i,c,pv,{T}"])
    with pytest.raises(ValueError, match="not found"):
        read_events(tmp_path / "none.csv")


def test_write_then_read_round_trip(tmp_path):
    from types import SimpleNamespace as E

    evs = [
        E(user_id="u", item_id="i1", type="view", ts=1_511_544_070_123),
        E(user_id="u", item_id="i2", type="purchase", ts=1_511_544_080_000),
    ]
    assert write_events(tmp_path / "e.csv", evs, {"i1": "shoes"}) == 2
    back = read_events(tmp_path / "e.csv")
    assert [(e.item_id, e.category, e.type, e.ts_ms) for e in back] == [
        ("i1", "shoes", "view", 1_511_544_070_000),
        ("i2", "unknown", "purchase", 1_511_544_080_000),
    ]
