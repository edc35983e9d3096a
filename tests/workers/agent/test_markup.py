"""The tool-call parser against every way a stream can split the markup."""

from __future__ import annotations

import itertools

import pytest

from workers.agent.markup import MAX_ARGUMENT_CHARS, ParsedCall, StopSequences, ToolCallParser

CALL = '<function>execute_code</function>{"language": "python", "code": "print(\\"}\\")"}'
TEXT = "Let me check it. "


def run(pieces: list[str], *, enabled: bool = True) -> tuple[str, ParsedCall | None, str]:
    parser = ToolCallParser(enabled=enabled)
    shown = []
    rest = []
    for piece in pieces:
        if parser.stop_requested:
            rest.append(piece)
            continue
        shown.append(parser.feed(piece))
    shown.append(parser.finish())
    return "".join(shown), parser.call, "".join(rest)


def splits(text: str, parts: int) -> list[list[str]]:
    """Every way of cutting `text` into `parts` non-empty pieces."""
    out = []
    for cuts in itertools.combinations(range(1, len(text)), parts - 1):
        bounds = [0, *cuts, len(text)]
        out.append([text[a:b] for a, b in itertools.pairwise(bounds)])
    return out


def test_every_two_and_three_way_split_of_a_call_yields_the_same_call():
    text = TEXT + CALL + " trailing words"
    cases = splits(text, 2) + splits(TEXT + CALL, 3)
    assert len(cases) > 1000
    for pieces in cases:
        shown, call, _ = run(pieces)
        assert shown == TEXT, pieces
        assert call == ParsedCall("execute_code", CALL[CALL.index("{") :]), pieces


def test_one_character_per_token_and_whole_text_agree():
    text = TEXT + CALL
    assert run(list(text))[:2] == run([text])[:2]


def test_markup_never_shown_even_while_streaming():
    parser = ToolCallParser()
    seen = "".join(parser.feed(c) for c in TEXT + CALL)
    assert "<" not in seen and "function" not in seen
    assert parser.stop_requested


def test_text_after_the_json_is_swallowed_and_decoding_should_stop():
    parser = ToolCallParser()
    assert parser.feed(CALL + " and more") == ""
    assert parser.stop_requested
    assert parser.feed("even more") == ""


@pytest.mark.parametrize("text", ["a < b", "x <func y", "<<function", "<functio", "1 <f"])
def test_angle_brackets_that_are_not_tags_are_text(text):
    shown, call, _ = run(list(text))
    assert shown == text and call is None


def test_held_prefix_released_when_disproved():
    parser = ToolCallParser()
    assert parser.feed("a <fun") == "a "
    assert parser.feed("ny") == "<funny"
    assert parser.finish() == ""


def test_tags_inside_a_code_fence_are_code():
    answer = "Here:\n```python\nhtml = '<function>x</function>{}'\n```\n"
    for pieces in splits(answer, 2):
        shown, call, _ = run(pieces)
        assert shown == answer and call is None, pieces


def test_call_after_a_closed_fence_is_a_call():
    text = "```python\nprint(1)\n```\n" + CALL
    shown, call, _ = run(list(text))
    assert shown == "```python\nprint(1)\n```\n"
    assert call is not None and call.name == "execute_code" and call.error is None


def test_tilde_fence_and_indented_fence():
    text = "  ~~~\n<function>a</function>{}\n  ~~~\n"
    shown, call, _ = run(list(text))
    assert shown == text and call is None


def test_backticks_mid_line_do_not_open_a_fence():
    text = "use ``` to fence " + CALL
    shown, call, _ = run(list(text))
    assert shown == "use ``` to fence " and call is not None


def test_nested_braces_and_escaped_quotes_in_arguments():
    args = '{"a": {"b": "}}\\"{"}, "c": [1, {"d": 2}]}'
    _, call, _ = run(list("<function>f</function>" + args + "tail"))
    assert call == ParsedCall("f", args)


def test_whitespace_between_tag_and_json_is_allowed():
    _, call, _ = run(["<function> get_history </function>\n  ", '{"language": "python"}'])
    assert call == ParsedCall("get_history", '{"language": "python"}')


def test_no_json_object_after_the_tag_is_malformed():
    _, call, _ = run(list("<function>f</function>not json"))
    assert call is not None and call.name == "f" and "expected a JSON object" in (call.error or "")


def test_name_that_never_closes_is_malformed():
    _, call, _ = run(["<function>" + "x" * 200])
    assert call is not None and "not closed" in (call.error or "")


def test_arguments_past_the_cap_are_malformed():
    parser = ToolCallParser()
    parser.feed('<function>f</function>{"a": "')
    parser.feed("x" * (MAX_ARGUMENT_CHARS + 10))
    assert parser.stop_requested
    assert parser.call is not None and "longer than" in (parser.call.error or "")


def test_call_cut_off_by_the_end_of_decoding_is_malformed():
    shown, call, _ = run(['ok <function>f</function>{"a": 1'])
    assert shown == "ok "
    assert call is not None and "cut off" in (call.error or "")


def test_disabled_parser_passes_everything_through():
    shown, call, _ = run(list(CALL), enabled=False)
    assert shown == CALL and call is None


def test_stop_sequences_hold_back_partial_matches():
    for pieces in splits("abc STOP def", 3):
        stops = StopSequences(["STOP", "###"])
        shown = "".join(stops.feed(p) for p in pieces) + stops.finish()
        assert shown == "abc ", pieces
        assert stops.stopped


def test_stop_sequence_prefix_that_does_not_complete_is_released():
    stops = StopSequences(["STOP"])
    assert stops.feed("a ST") == "a "
    assert stops.feed("ART") == "START"
    assert stops.finish() == ""
    assert not stops.stopped
