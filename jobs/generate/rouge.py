"""The ROUGE-L near-duplicate filter, decision-for-decision equal to `rouge_score`, without its quadratic cost.

The reference (RougeScorer(['rougeL']) with its default tokenizer, no stemmer) scores a new instruction
against every seed and every kept instruction with an O(m*n) Python table each time. Here:

* tokens are the same maximal runs of [a-z0-9] in the lowercased text that the reference tokenizer keeps;
* a pair can only score above the threshold if its LCS reaches a minimal length, and the LCS is bounded
  by the multiset overlap of the two token lists; so instructions are indexed by a short *prefix* of their
  tokens (rarest first), and only instructions sharing two prefix tokens with the new one are looked at
  (the prefix filter of set-similarity joins), with set operations that run in C;
* the survivors' overlap is counted exactly (a set intersection), and the few left get an exact LCS by
  a bit-parallel algorithm over Python integers; the F-measure is computed with the reference's own
  float expression, so scores of exactly the threshold fall on the same side.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

_TOKEN_RE = re.compile(r"[a-z0-9]+")

# Slack on the threshold when deriving bounds: the float F-measure differs from 2*L/(m+n) by a few
# ulps, so a bound this much looser can never prune a pair the exact formula would keep.
_BOUND_SLACK = 1e-6

# Element ids pack (occurrence, token id) into one int: the k-th occurrence of a token is its own
# element, which turns multiset overlap into plain set overlap.
_OCCURRENCE_SHIFT = 32
_KNOWN_RANK = 1 << 62


def tokenize(text: str) -> list[str]:
    """The reference tokenizer's output: lowercase, non-alphanumerics are separators, no stemming."""
    return _TOKEN_RE.findall(text.lower())


def rouge_l_fmeasure(lcs: int, target_len: int, prediction_len: int) -> float:
    """F-measure exactly as rouge_score computes it (same operations in the same order)."""
    if target_len == 0 or prediction_len == 0:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def match_masks(tokens: Sequence[int]) -> dict[int, int]:
    """For each token, a bit mask of the positions where it occurs (input of `lcs_length`)."""
    masks: dict[int, int] = {}
    for position, token in enumerate(tokens):
        masks[token] = masks.get(token, 0) | (1 << position)
    return masks


def lcs_length(masks: dict[int, int], length: int, other: Iterable[int]) -> int:
    """Length of the longest common subsequence of the masked sequence and `other`.

    Bit-parallel (Allison-Dix / Hyyroe): one column of the DP table is a bit vector, and one
    addition advances it by a whole token of `other`.
    """
    full = (1 << length) - 1
    column = full
    for token in other:
        matched = column & masks.get(token, 0)
        if matched:
            column = ((column + matched) | (column - matched)) & full
    return length - column.bit_count()


def lcs_reference(a: Sequence[object], b: Sequence[object]) -> int:
    """Plain dynamic-programming LCS, for tests and for checking the fast one."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


class RougeLFilter:
    """Instructions kept so far, and the question: does a new one score above the threshold against any?

    `add` never checks; `too_similar` never adds. The generator calls `too_similar` and then `add` for
    what it keeps; seeds are added up front.
    """

    def __init__(self, threshold: float = 0.7) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"ROUGE-L threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self._vocab: dict[str, int] = {}
        self._docs: list[list[int]] = []  # token ids of each indexed instruction
        self._elements: list[list[int]] = []  # its elements (see _OCCURRENCE_SHIFT)
        self._element_sets: list[frozenset[int]] = []  # the same, for C-speed overlap counts
        # element -> instructions holding it in their indexed prefix (see _depth).
        self._index: dict[int, list[int]] = {}
        # The global "rarest first" order, frozen at the last rebuild; it must stay fixed between
        # rebuilds for the prefix filter to be exact. Elements unseen at the rebuild sort first, by
        # value (an element is below 2**62); seen ones after them, by rank.
        self._rank: dict[int, int] = {}
        self._rebuilt_at = 0
        self._min_overlap_cache: dict[int, int] = {}
        self._needs_cache: dict[int, list[int | None]] = {}

    def __len__(self) -> int:
        return len(self._docs)

    # -- bounds -----------------------------------------------------------------------------------

    def _required_lcs(self, m: int, n: int) -> int:
        """Smallest LCS with which a pair of lengths m, n could score above the threshold."""
        return max(1, math.ceil((self.threshold - _BOUND_SLACK) * (m + n) / 2))

    def _feasible(self, m: int, n: int) -> bool:
        return min(m, n) >= self._required_lcs(m, n)

    def _min_overlap(self, length: int) -> int:
        """The least overlap any partner needs with an instruction of this length (0: none can match)."""
        cached = self._min_overlap_cache.get(length)
        if cached is None:
            # The required LCS grows with the partner's length, so the smallest feasible partner
            # (never longer than `length` when any is feasible) gives the minimum.
            cached = next(
                (self._required_lcs(length, n) for n in range(1, length + 1) if self._feasible(length, n)),
                0,
            )
            self._min_overlap_cache[length] = cached
        return cached

    def _needs(self, m: int) -> list[int | None]:
        """For a query of length m, indexed by partner length n: the LCS the pair must reach to score
        above the threshold, or None when no pair of these lengths can."""
        table = self._needs_cache.get(m)
        if table is None:
            table = [None]
            n = 1
            # Feasibility is monotone in n beyond m, so the table ends at the first infeasible n > m.
            while n <= m or self._feasible(m, n):
                need = self._required_lcs(m, n)
                table.append(need if need <= min(m, n) else None)
                n += 1
            self._needs_cache[m] = table
        return table

    def _ordered(self, elements: list[int]) -> list[int]:
        rank = self._rank.get
        return sorted(elements, key=lambda e: rank(e, e))

    # -- tokens -----------------------------------------------------------------------------------

    def _ids(self, tokens: Sequence[str], *, grow: bool) -> list[int]:
        vocab = self._vocab
        if grow:
            return [vocab.setdefault(t, len(vocab)) for t in tokens]
        # Unknown tokens cannot match anything indexed; -1 keeps their positions.
        return [vocab.get(t, -1) for t in tokens]

    @staticmethod
    def _to_elements(ids: Sequence[int]) -> list[int]:
        seen: dict[int, int] = {}
        elements = []
        for token in ids:
            k = seen.get(token, 0)
            seen[token] = k + 1
            elements.append((k << _OCCURRENCE_SHIFT) | (token & 0xFFFFFFFF))
        return elements

    # -- queries ----------------------------------------------------------------------------------

    def _depth(self, length: int) -> int:
        """How many of an instruction's first elements hold its first two shared ones with any match.

        With overlap >= t, ordering both sides by the global order, the two smallest common elements
        lie within the first length-t+2 elements of each side (the smallest within length-t+1), and t
        is at least the length's minimal overlap.
        """
        need = self._min_overlap(length)
        return 0 if need == 0 else length - need + min(2, need)

    def _candidates(self, m: int, elements: list[int]) -> list[int]:
        depth = self._depth(m)
        if depth == 0:
            return []
        index = self._index
        seen: set[int] = set()
        twice: set[int] = set()
        # Set operations run in C; a Python loop over every posting would cost more than the rest.
        for element in self._ordered(elements)[:depth]:
            docs = index.get(element)
            if docs:
                twice.update(seen.intersection(docs))
                seen.update(docs)
        # A pair that can match shares two elements in these prefixes, or one when a single common
        # token is enough (very short pairs, or low thresholds).
        if 1 not in self._needs(m):
            return list(twice)
        docs_tokens = self._docs
        needs = self._needs(m)
        longest = len(needs)
        return list(twice) + [
            doc for doc in seen - twice if len(docs_tokens[doc]) < longest and needs[len(docs_tokens[doc])] == 1
        ]

    def max_score_above(self, tokens: Sequence[str]) -> float | None:
        """The first score above the threshold against an indexed instruction, or None if there is none."""
        m = len(tokens)
        if m == 0 or not self._docs:
            return None
        ids = self._ids(tokens, grow=False)
        elements = self._to_elements(ids)
        candidates = self._candidates(m, elements)
        if not candidates:
            return None
        query = frozenset(elements)
        masks: dict[int, int] | None = None
        threshold = self.threshold
        docs_tokens = self._docs
        element_sets = self._element_sets
        needs = self._needs(m)
        longest = len(needs)
        for doc in candidates:
            other = docs_tokens[doc]
            n = len(other)
            need = needs[n] if n < longest else None
            # The LCS is at most the multiset overlap: a set intersection in C rules out most of the
            # rest before the LCS pass.
            if need is None or len(query & element_sets[doc]) < need:
                continue
            if masks is None:
                masks = match_masks(ids)
            lcs = lcs_length(masks, m, other)
            # The new instruction is the reference's target, the indexed one its prediction.
            score = rouge_l_fmeasure(lcs, m, n)
            if score > threshold:
                return score
        return None

    def too_similar(self, tokens: Sequence[str]) -> bool:
        return self.max_score_above(tokens) is not None

    def add(self, tokens: Sequence[str]) -> None:
        ids = self._ids(tokens, grow=True)
        self._docs.append(ids)
        elements = self._to_elements(ids)
        self._elements.append(elements)
        self._element_sets.append(frozenset(elements))
        if len(self._docs) >= max(64, 2 * self._rebuilt_at):
            self._rebuild()
        else:
            self._index_prefix(len(self._docs) - 1)

    def _index_prefix(self, doc: int) -> None:
        elements = self._elements[doc]
        index = self._index
        for element in self._ordered(elements)[: self._depth(len(elements))]:
            docs = index.get(element)
            if docs is None:
                index[element] = [doc]
            else:
                docs.append(doc)

    def _rebuild(self) -> None:
        """Re-rank elements by how many instructions hold them, and re-index every prefix.

        Done each time the index doubles, so the order tracks the data at amortised linear cost.
        """
        frequency: dict[int, int] = {}
        for elements in self._elements:
            for element in elements:
                frequency[element] = frequency.get(element, 0) + 1
        by_rarity = sorted(frequency, key=lambda e: (frequency[e], e))
        self._rank = {element: _KNOWN_RANK + rank for rank, element in enumerate(by_rarity)}
        self._index = {}
        for doc in range(len(self._docs)):
            self._index_prefix(doc)
        self._rebuilt_at = len(self._docs)
