"""Cutting a sequence into message-sized parts."""

from libs.parts import parts


def test_parts_keep_order_and_respect_count_and_size():
    assert parts([], len, 3, 10) == []
    assert parts(["a"] * 7, len, 3, 100) == [["a"] * 3, ["a"] * 3, ["a"]]
    assert parts(["aaaa", "bbbb", "cc", "d"], len, 10, 6) == [["aaaa"], ["bbbb", "cc"], ["d"]]
    assert parts(["x" * 20, "y"], len, 10, 6) == [["x" * 20], ["y"]]  # too big: alone
