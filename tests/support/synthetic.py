"""Synthetic English tasks in the shape of Alpaca's data, for the test teacher and the benchmarks.

Words are drawn with their frequencies in the project's own seed and evaluation tasks, so the text
has the statistics of English instructions (a few very common words, a long tail) without any
external data. About 40% of tasks get an input, as in Alpaca's data.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SEEDS_DIR = Path(__file__).resolve().parents[2] / "seeds"

# Instruction openings seen in instruction data: a verb, sometimes a question word.
OPENINGS = (
    "Write", "Explain", "Describe", "List", "Give", "Summarize", "Classify", "Rewrite", "Suggest",
    "Compare", "Identify", "Create", "Translate", "Generate", "Find", "Name", "Tell me", "Edit",
    "Propose", "Outline", "What is", "How can", "Why does", "Brainstorm", "Convert", "Evaluate",
    "Recommend", "Extract", "Calculate", "Predict",
)


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[tuple[str, ...], tuple[int, ...]]:
    counts: Counter[str] = Counter()
    for name in ("seed_tasks.jsonl", "eval_tasks.jsonl"):
        for line in (SEEDS_DIR / name).read_text(encoding="utf-8").splitlines():
            task = json.loads(line)
            text = " ".join([task["instruction"], *(i["input"] + " " + i["output"] for i in task["instances"])])
            counts.update(w.lower() for w in re.findall(r"[A-Za-z]+", text))
    words = tuple(sorted(counts))
    return words, tuple(itertools.accumulate(counts[w] for w in words))


@dataclass(frozen=True)
class Task:
    instruction: str
    input: str
    output: str


class SyntheticTasks:
    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._words, self._cumulative = _vocabulary()

    def _words_like_english(self, count: int) -> list[str]:
        # Cumulative weights once, not per call: this runs inside the test teacher's request path.
        return self._rng.choices(self._words, cum_weights=self._cumulative, k=count)

    def instruction(self) -> str:
        length = max(3, min(40, round(self._rng.gauss(12, 4))))
        opening = self._rng.choice(OPENINGS)
        return f"{opening} {' '.join(self._words_like_english(length))}."

    def near_duplicate(self, instruction: str) -> str:
        """The same instruction with one or two words changed, dropped or added."""
        words = instruction.rstrip(".").split()
        for _ in range(self._rng.randint(1, 2)):
            position = self._rng.randrange(1, len(words)) if len(words) > 1 else 0
            action = self._rng.random()
            if action < 0.4:
                words[position] = self._words_like_english(1)[0]
            elif action < 0.7 and len(words) > 4:
                del words[position]
            else:
                words.insert(position, self._words_like_english(1)[0])
        return " ".join(words) + "."

    def exact_tie(self, instruction: str) -> str | None:
        """An instruction whose ROUGE-L F-measure against `instruction` is exactly 0.7 in real numbers.

        With m and n tokens and an LCS of L, F = 2L/(m+n); picking m+n as a multiple of 20 and
        L = 0.35(m+n) gives 0.7, which floating point rounds to just above or just below.
        """
        tokens = re.findall(r"[a-z0-9]+", instruction.lower())
        m = len(tokens)
        k = 1 if 7 <= m <= 13 else 2 if 14 <= m <= 26 else 0
        if k == 0:
            return None
        n, lcs = 20 * k - m, 7 * k
        fresh = [w for w in self._words_like_english(4 * n) if w not in set(tokens)][: n - lcs]
        if len(fresh) < n - lcs:
            return None
        return " ".join(tokens[:lcs] + fresh).capitalize() + "."

    def instructions(self, count: int, near_duplicate_rate: float = 0.1, tie_rate: float = 0.0) -> list[str]:
        """`count` instructions; about `near_duplicate_rate` of them near-copies of an earlier one,
        and about `tie_rate` scoring exactly 0.7 against an earlier one."""
        out: list[str] = []
        while len(out) < count:
            draw = self._rng.random()
            if out and draw < near_duplicate_rate:
                out.append(self.near_duplicate(self._rng.choice(out)))
            elif out and draw < near_duplicate_rate + tie_rate:
                tie = self.exact_tie(self._rng.choice(out))
                if tie is not None:
                    out.append(tie)
            else:
                out.append(self.instruction())
        return out

    def task(self) -> Task:
        instruction = self.instruction()
        has_input = self._rng.random() < 0.4
        text_input = " ".join(self._words_like_english(self._rng.randint(8, 30))) if has_input else ""
        output = " ".join(self._words_like_english(max(5, round(self._rng.gauss(45, 15)))))
        return Task(instruction, text_input, output.capitalize() + ".")
