"""A synthetic text whose best achievable bits per byte is known exactly (issue #36): a seeded first-order
Markov chain over made-up words, so a model's val bpb on it can be read against the floor no model can beat.

The chain: VOCAB words of 2-9 lowercase letters, each followed by a space, plus a newline token; each token has
SUCCESSORS possible successors drawn at random, with Zipf-like weights 1/rank. Its entropy rate per token is
H = sum_i pi_i H(P_i) (pi the stationary distribution, P_i row i; Cover & Thomas, Elements of Information Theory,
theorem 4.2.4); as the text is a prefix-free concatenation of the tokens (every word ends in its space, the newline
stands alone), the text carries the same information, so its entropy rate per byte is H / sum_i pi_i len(token_i).

    python scripts/markov_text.py OUT.txt [--bytes 2000000] [--seed 0]

Prints the entropy rate in bits per byte; the same seed writes the same text.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

VOCAB = 1000
SUCCESSORS = 12
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def chain(seed: int) -> tuple[list[str], np.ndarray]:
    """The tokens (words with their space, and a newline) and the row-stochastic transition matrix."""
    rng = np.random.default_rng(seed)
    words: set[str] = set()
    while len(words) < VOCAB - 1:
        words.add("".join(rng.choice(list(LETTERS), size=rng.integers(2, 10))) + " ")
    tokens = sorted(words) + ["\n"]
    weights = 1 / np.arange(1, SUCCESSORS + 1)
    matrix = np.zeros((VOCAB, VOCAB))
    for i in range(VOCAB):
        matrix[i, rng.choice(VOCAB, size=SUCCESSORS, replace=False)] = weights / weights.sum()
    return tokens, matrix


def stationary(matrix: np.ndarray) -> np.ndarray:
    """pi with pi P = pi: the left eigenvector of eigenvalue 1, normalised (the chain is irreducible and
    aperiodic with probability ~1 at 12 random successors a token; power iteration checks it converged)."""
    pi = np.full(len(matrix), 1 / len(matrix))
    for _ in range(10_000):
        nxt = pi @ matrix
        if np.abs(nxt - pi).max() < 1e-15:
            return nxt
        pi = nxt
    raise SystemExit("the chain did not mix; try another --seed")


def entropy_rate_bpb(tokens: list[str], matrix: np.ndarray) -> float:
    """Bits per byte of the stationary chain's text: H per token over the mean bytes a token."""
    pi = stationary(matrix)
    logs = np.where(matrix > 0, np.log2(np.where(matrix > 0, matrix, 1)), 0.0)
    per_token = -(pi * (matrix * logs).sum(axis=1)).sum()
    mean_bytes = (pi * np.array([len(t.encode()) for t in tokens])).sum()
    return float(per_token / mean_bytes)


def generate(tokens: list[str], matrix: np.ndarray, n_bytes: int, seed: int) -> str:
    """About n_bytes of text walked from the stationary distribution."""
    rng = np.random.default_rng(seed + 1)
    cumulative = matrix.cumsum(axis=1)
    state = int(rng.choice(len(tokens), p=stationary(matrix)))
    parts, size = [], 0
    while size < n_bytes:
        parts.append(tokens[state])
        size += len(tokens[state])
        state = min(int(np.searchsorted(cumulative[state], rng.random(), side="right")), len(tokens) - 1)
    return "".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--bytes", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tokens, matrix = chain(args.seed)
    args.out.write_text(generate(tokens, matrix, args.bytes, args.seed), encoding="utf-8")
    print(f"{args.out}: {args.out.stat().st_size:,} bytes, entropy rate {entropy_rate_bpb(tokens, matrix):.4f} bits per byte")


if __name__ == "__main__":
    main()
