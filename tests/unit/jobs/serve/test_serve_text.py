"""Incremental detokenization and stop strings: the same text as decoding the whole answer, with
work per token that does not grow with the answer."""

import random

import pytest

from alpaca_jobs.serve.text import Delta, Detokenizer, StopScanner


def feed_all(scanner: StopScanner, pieces: list[str]) -> tuple[str, bool]:
    sent = ""
    for i, piece in enumerate(pieces):
        delta = scanner.feed(piece, final=i == len(pieces) - 1)
        sent += delta.text
        if delta.stopped:
            return sent, True
    return sent, False


def test_without_stops_everything_new_is_sent() -> None:
    assert StopScanner(()).feed("world") == Delta("world", stopped=False)


def test_stop_string_ends_the_text_before_it() -> None:
    assert StopScanner(("STOP",)).feed("one two STOP three") == Delta("one two ", stopped=True)


def test_stop_string_straddling_pieces_is_found_and_never_sent() -> None:
    scanner = StopScanner(("STOP",))
    assert scanner.feed("one ST") == Delta("one ", stopped=False)
    assert scanner.feed("OP two") == Delta("", stopped=True)


def test_possible_start_of_a_stop_string_is_held_then_released() -> None:
    scanner = StopScanner(("###",))
    assert scanner.feed("answer: ##") == Delta("answer: ", stopped=False)
    assert scanner.feed("x") == Delta("##x", stopped=False)


def test_final_flush_sends_what_was_held() -> None:
    scanner = StopScanner(("###",))
    scanner.feed("answer: ##")
    assert scanner.feed("", final=True) == Delta("##", stopped=False)


def test_earliest_of_several_stops_wins() -> None:
    assert StopScanner(("c", "b")).feed("a b c") == Delta("a ", stopped=True)


@pytest.mark.parametrize("seed", range(5))
def test_pieces_of_any_size_give_the_text_before_the_first_stop(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice("ab#c ") for _ in range(300))
    stops = ("#a#", "cc c")
    cuts = sorted(rng.sample(range(1, len(text)), 60))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
    first = min((i for i in (text.find(s) for s in stops) if i >= 0), default=None)
    expected = (text, False) if first is None else (text[:first], True)
    assert feed_all(StopScanner(stops), pieces) == expected


@pytest.fixture(scope="module")
def tokenizer():
    from alpaca_jobs.models import builtin_files, load_tokenizer

    return load_tokenizer(builtin_files("smollm2-135m-instruct"))


class CountingTokenizer:
    """The real tokenizer, recording how many ids each decode call was given."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.sizes = tokenizer, []

    def decode(self, ids, **kwargs):
        self.sizes.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)


def incremental(tokenizer, ids: list[int]) -> str:
    detokenizer = Detokenizer(tokenizer)
    return "".join(detokenizer.push(i) for i in ids) + detokenizer.flush()


def test_incremental_text_equals_decoding_the_whole_answer(tokenizer) -> None:
    text = "Café — naïve 日本語の文章です. Ünïcödé ✓ emoji 🦙🦙 and plain words, numbers 12345.\n\tTabs too."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert incremental(tokenizer, ids) == tokenizer.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_are_skipped_as_in_a_whole_decode(tokenizer) -> None:
    ids = tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    ids = ids[:1] + [tokenizer.eos_token_id] + ids[1:]
    assert incremental(tokenizer, ids) == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("seed", range(3))
def test_random_token_streams_match_a_whole_decode_with_a_bounded_window(tokenizer, seed: int) -> None:
    # Random ids from the whole vocabulary: byte pieces that split characters, and invalid UTF-8.
    rng = random.Random(seed)
    ids = [rng.randrange(len(tokenizer)) for _ in range(400)]
    counting = CountingTokenizer(tokenizer)
    got = incremental(counting, ids)
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    assert got == whole
    # Constant work per token: every decode call sees a window of a few tokens, never the answer.
    assert max(counting.sizes) <= 8


def test_window_stays_small_over_a_long_answer(tokenizer) -> None:
    ids = tokenizer("word " * 2000, add_special_tokens=False)["input_ids"]
    counting = CountingTokenizer(tokenizer)
    assert incremental(counting, ids) == "word " * 2000
    assert max(counting.sizes) <= 2
