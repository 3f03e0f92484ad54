"""PII masking: checksums decide what is an ID number or a bank card; phones and e-mails by pattern."""

from __future__ import annotations

from collections import Counter

from chatforge.data.cleaning.pii import PIIConfig, id_checksum_ok, luhn_ok, mask_pii


def make_id(first17: str) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, weights)) % 11]


def make_card(prefix: str) -> str:
    for d in "0123456789":
        if luhn_ok(prefix + d):
            return prefix + d
    raise AssertionError


def test_id_checksum():
    assert id_checksum_ok("11010519491231002X")  # the GB 11643 standard's example number
    assert not id_checksum_ok("110105194912310021")
    assert id_checksum_ok(make_id("44030619900101123")) and not id_checksum_ok("4403061990010112")


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("4111 1111 1111 1111")
    assert not luhn_ok("4111111111111112") and not luhn_ok("12345")


def test_masks_valid_ids_only():
    cfg, counts = PIIConfig(), Counter()
    good, bad = make_id("44030619900101123"), "440306199001011230"
    if id_checksum_ok(bad):
        bad = bad[:-1] + "1"
    out = mask_pii(f"身份证号{good}，另一个{bad}。", cfg, counts)
    assert "[id_card]" in out and good not in out
    assert bad in out  # wrong check digit: not an ID (and not a Luhn-valid card either, or it would be masked)
    assert counts["id_card"] == 1 or (counts["bank_card"] == 1 and luhn_ok(bad))


def test_lowercase_x_and_boundaries():
    pid = make_id("11010519491231002")
    assert pid.endswith("X")
    assert mask_pii(f"ID:{pid.lower()}", PIIConfig()) == "ID:[id_card]"
    assert mask_pii(f"9{pid}", PIIConfig()) == f"9{pid}"  # part of a longer number: not an ID


def test_bank_cards_need_luhn():
    card = make_card("622202020000000000")  # 19 digits
    card16 = make_card("411111111111111")
    wrong = card16[:-1] + str((int(card16[-1]) + 1) % 10)
    counts = Counter()
    out = mask_pii(
        f"卡号 {card} 和 {card16[:4]} {card16[4:8]} {card16[8:12]} {card16[12:]}，订单号 {wrong}", PIIConfig(), counts
    )
    assert counts["bank_card"] == 2 and out.count("[bank_card]") == 2 and wrong in out


def test_mobile_numbers():
    counts = Counter()
    text = "电话13812345678，或 +86 139-1234-5678，座机 010-12345678，号码 12345678901，长串 138123456789"
    out = mask_pii(text, PIIConfig(), counts)
    assert counts["mobile"] == 2
    assert "电话[mobile]" in out and "139-1234-5678" not in out
    assert "010-12345678" in out and "12345678901" in out and "138123456789" in out  # not 1[3-9] + 9 digits alone


def test_email_and_kind_selection():
    text = "Mail zhang.san+x@mail.example.com.cn or 13812345678"
    assert mask_pii(text, PIIConfig()) == "Mail [email] or [mobile]"
    only_mail = PIIConfig(kinds=["email"], placeholder="<{kind}>")
    assert mask_pii(text, only_mail) == "Mail <email> or 13812345678"


def test_text_without_pii_is_unchanged():
    text = "2023年有12345人参加，编号 0001。"
    assert mask_pii(text, PIIConfig()) == text
