"""Journal entries carry the fingerprint of the request that produced them."""

from __future__ import annotations

import json

from alpaca_jobs.evaluate.journal import Entry, fingerprint

MESSAGES = [{"role": "user", "content": "Name a prime."}]
PARAMS = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64}


def test_the_fingerprint_follows_every_part_of_the_request_but_not_the_order_of_its_parameters() -> None:
    base = fingerprint("http://127.0.0.1:1/v1", "m", MESSAGES, PARAMS)
    assert base == fingerprint("http://127.0.0.1:1/v1", "m", MESSAGES, dict(reversed(PARAMS.items())))
    variants = [
        fingerprint("http://127.0.0.1:2/v1", "m", MESSAGES, PARAMS),
        fingerprint("http://127.0.0.1:1/v1", "other", MESSAGES, PARAMS),
        fingerprint("http://127.0.0.1:1/v1", "m", [{"role": "user", "content": "Name two primes."}], PARAMS),
        *(fingerprint("http://127.0.0.1:1/v1", "m", MESSAGES, {**PARAMS, name: value})
          for name, value in (("temperature", 0.0), ("top_p", 1.0), ("max_tokens", 48))),
    ]
    assert len({base, *variants}) == 1 + len(variants)


def test_the_fingerprint_survives_the_journal_and_older_entries_read_without_one() -> None:
    entry = Entry("answer", "k", "candidate", content="2", fp=fingerprint("u", "m", MESSAGES, PARAMS))
    assert Entry.from_json(entry.to_json()) == entry
    older = json.loads(entry.to_json())
    del older["fp"]
    assert Entry.from_json(json.dumps(older)).fp is None
