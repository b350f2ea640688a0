"""Pairwise evaluation: a candidate against a baseline, judged by a model in both orders.

Both contestants answer the same held-out instructions (tasks.py; answers may also be read from
a file, outputs.py). The judge sees each pair twice, the candidate's answer first as A and then
as B (rubric.py), and its verdict is read from structured or plain replies (verdicts.py). A task
is won when the candidate wins both orders or one and ties the other, lost the other way round,
and tied otherwise: a judge that always prefers one position produces ties, not wins. The figures
(stats.py): the win rate with ties as half, its 95% bootstrap interval, and a length-controlled
win rate. Every request is journaled (journal.py) so a killed job resumes without asking or
paying twice, and a rerun after the spec changed reuses only what the new spec would ask the
same (each entry keeps its request's fingerprint); runner.py drives it within a budget, summary.py and chart.py write the report:

    judgements.jsonl   per task: instruction, input, both answers, both verdicts, outcome
    summary.json       the Score, counts, tokens and cost by role, labels (the result's artifact)
    win_rate.png       the win / tie / loss split with the win rate and its interval
    manifest.json      stop reason and the result (written last)
    journal.jsonl      every request, answer and verdict, for resuming
"""
