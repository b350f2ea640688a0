from alpaca_jobs.serve.text import Delta, next_delta


def test_without_stops_everything_new_is_sent() -> None:
    assert next_delta("Hello world", 6, ()) == Delta("world", stopped=False)


def test_incomplete_character_is_held_until_complete() -> None:
    assert next_delta("caf\ufffd", 0, ()) == Delta("caf", stopped=False)
    assert next_delta("café", 3, ()) == Delta("é", stopped=False)


def test_stop_string_ends_the_text_before_it() -> None:
    assert next_delta("one two STOP three", 0, ("STOP",)) == Delta("one two ", stopped=True)


def test_stop_string_straddling_sent_and_new_text_is_found() -> None:
    # "ST" was held back last time, so only "one " was sent.
    assert next_delta("one STOP", 4, ("STOP",)) == Delta("", stopped=True)


def test_possible_start_of_a_stop_string_is_held() -> None:
    assert next_delta("answer: ##", 0, ("###",)) == Delta("answer: ", stopped=False)
    assert next_delta("answer: ##x", 8, ("###",)) == Delta("##x", stopped=False)


def test_final_flush_sends_what_was_held() -> None:
    assert next_delta("answer: ##", 8, ("###",), final=True) == Delta("##", stopped=False)


def test_earliest_of_several_stops_wins() -> None:
    assert next_delta("a b c", 0, ("c", "b")) == Delta("a ", stopped=True)
