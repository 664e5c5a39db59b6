"""Command templates give exactly the bytes hiredis packs for the same arguments."""

from __future__ import annotations

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.store.resp import OPEN, CommandTemplate, pack

ARG = st.one_of(st.text(max_size=20), st.binary(max_size=20), st.integers(-10**15, 10**15))


@given(st.lists(st.one_of(ARG, st.just(OPEN)), min_size=1, max_size=12),
       st.lists(st.binary(max_size=40), min_size=12, max_size=12))
def test_a_filled_template_is_the_packed_command(args: list[object],
                                                 values: list[bytes]) -> None:
    opens = sum(1 for a in args if a is OPEN)
    filled = iter(values[:opens])
    full = [next(filled) if a is OPEN else a for a in args]
    assert CommandTemplate(args).fill(*values[:opens]) == hiredis.pack_command(tuple(full))


def test_percent_signs_in_fixed_arguments_stay_as_they_are() -> None:
    template = CommandTemplate(["SET", "100%s%d%%", OPEN])
    assert template.fill(b"%b") == pack(["SET", "100%s%d%%", b"%b"])


def test_the_number_of_values_must_match() -> None:
    template = CommandTemplate(["GET", OPEN])
    with pytest.raises(ValueError, match="1 open"):
        template.fill(b"a", b"b")


@given(st.lists(ARG, max_size=6), st.lists(ARG, max_size=6), st.lists(ARG, max_size=6),
       st.tuples(st.binary(max_size=40), st.binary(max_size=40), st.binary(max_size=40)))
def test_fill3_is_fill_of_three(head: list[object], mid: list[object], tail: list[object],
                                values: tuple[bytes, bytes, bytes]) -> None:
    template = CommandTemplate(["EVALSHA", *head, OPEN, *mid, OPEN, *tail, OPEN])
    assert template.fill3(*values) == template.fill(*values)


def test_fill3_needs_three_open_arguments() -> None:
    with pytest.raises(ValueError, match="2 open"):
        CommandTemplate(["SET", OPEN, OPEN]).fill3(b"a", b"b", b"c")
