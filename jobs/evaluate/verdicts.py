"""Reading the judge's verdict out of its reply, whatever shape the reply took.

A judge under a json_schema response_format answers `{"winner": "A", ...}`; a judge that ignores
it may wrap that object in prose or a code fence, cut it short at max_tokens, or answer in words
("Output (a) is better", "B", "[[A]]", "It's a tie"). Anything that names one winner clearly is
read; a reply that names none, or both, is no verdict (None): the caller counts it as a tie and
as unparsed, so a judge answering garbage can only pull the result towards even.
"""

from __future__ import annotations

import json
import re
from typing import Literal

Winner = Literal["A", "B", "tie"]

_KEYS = ("winner", "verdict", "better", "preferred", "choice", "answer", "best")
_TIE_WORDS = {"tie", "tied", "draw", "equal", "equally good", "both", "neither", "same", "none", "c"}
# A label with the words judges wrap around it: "Output (a)", "answer B", "Response: A", "[[B]]".
_LABEL = r"(?:(?:output|answer|response|assistant|model|option)\s*[:#]?\s*)?[\[\(\"'*]*\s*([ab])\s*[\]\)\"'*]*"
_WHO = r"(?:output|answer|response|assistant|option)"
_NAMED = [
    # "[[A]]" (a common judge convention; [[C]] is its tie).
    re.compile(r"\[\[\s*(a|b|c|tie)\s*\]\]"),
    # "winner: B", "the verdict is tie", "my choice is Output (a)".
    re.compile(r"\b(?:winner|verdict|decision|choice|preferred|preference)\b[^a-z\n]{0,4}(?:is\s+)?(?:that\s+)?"
               r"(tie|draw|" + _LABEL + r")\b"),
    # "the better answer is A".
    re.compile(r"\b(?:better|best|preferred|winning)\s+(?:one|answer|output|response)\s+is\s+(?:the\s+)?(tie|" + _LABEL + r")\b"),
    # "Output (a) is clearly better".
    re.compile(r"\b" + _WHO + r"\s*[\(\[]?\s*([ab])\s*[\)\]]?\s+(?:is|was|wins|seems)\s+(?:clearly\s+|slightly\s+|much\s+)?"
               r"(?:better|the better|preferred|stronger|superior|more helpful|the winner)"),
    # "I prefer response B".
    re.compile(r"\bi\s+(?:prefer|choose|pick|select)\s+(" + _LABEL + r")\b"),
]
_TIE_SENTENCE = re.compile(
    r"\b(?:it'?s|it is|this is|a|call it a|result is a)\s+(?:tie|draw)\b"
    r"|\bboth (?:answers |outputs |responses )?are (?:equally|just as) (?:good|bad|helpful)\b|\bequally good\b"
)


def normalise(value: object) -> Winner | None:
    """A verdict value as a judge might write it ("A", "output (b)", "Tie", 1/2...), or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return {1: "A", 2: "B", 0: "tie"}.get(value)  # type: ignore[return-value]
    if not isinstance(value, str):
        return None
    text = value.strip().lower().strip(" .!:;\"'`*[]()")
    if text in _TIE_WORDS:
        return "tie"
    match = re.fullmatch(_LABEL, text)
    if match:
        return "A" if match.group(1) == "a" else "B"
    return None


def _from_json_objects(reply: str) -> Winner | None | Literal[False]:
    """The verdict of the first JSON object in the reply that has a verdict key; False when none has one."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", reply)):
        try:
            data, _ = decoder.raw_decode(reply, start)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            lowered = {str(k).lower(): v for k, v in data.items()}
            for key in _KEYS:
                if key in lowered:
                    return normalise(lowered[key])
    return False


def parse_verdict(reply: str | None) -> Winner | None:
    """The winner named by a judge's reply ("A", "B" or "tie"), or None when it names no single one."""
    if not reply or not reply.strip():
        return None
    found = _from_json_objects(reply)
    if found is not False:
        return found
    # JSON cut short by max_tokens: the winner key came first and is complete.
    cut = re.search(r'"(?:winner|verdict)"\s*:\s*"([^"]{1,20})"', reply, re.IGNORECASE)
    if cut:
        return normalise(cut.group(1))
    whole = normalise(reply)
    if whole is not None:
        return whole
    text = reply.lower()
    # A bare letter on the first line: "A", "B.", "A - it answers the question".
    first = re.match(r"\s*[\[\(\"'*]*([ab])[\]\)\"'*]*\s*(?:$|[\n.,:;!\-–—])", text)
    if first:
        return "A" if first.group(1) == "a" else "B"
    named: set[Winner] = set()
    for pattern in _NAMED:
        for match in pattern.finditer(text):
            value = normalise(next(g for g in match.groups() if g is not None))
            if value is not None:
                named.add(value)
    if _TIE_SENTENCE.search(text):
        named.add("tie")
    return named.pop() if len(named) == 1 else None
