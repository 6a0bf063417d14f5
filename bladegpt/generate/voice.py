"""The voice report: how much samples loop, and how far their style is from the held-out text.

**Loops**: the share of a sample's word 4-grams that repeat an earlier 4-gram of the same sample, 1 -
distinct / total (0 for a fresh text; "to make us, to make us, to make us" scores 3/6 = 0.5). Words are
runs of letters (an inner apostrophe kept: "don't"), lowercased, punctuation and digits left out; 4-grams
are counted within each sample, never across two; a sample with fewer than 4 words has none, and samples
with no 4-gram at all have no loops figure (None).

**Style distance**: Burrows's Delta (J. Burrows 2002, "'Delta': a Measure of Stylistic Difference and a
Guide to Likely Authorship", Literary and Linguistic Computing 17(3), 267-287) between the samples and the
held-out text: the mean over the held-out text's most frequent words of |z|, where z is a word's rate in the
samples (their words pooled) minus its rate in the held-out text, over the spread of that rate. Delta takes
the spread from a reference corpus (Burrows: 25 poets); one voice has none, so it is the spread over
windows of the held-out text as long as the samples (every position's window, or MAX_WINDOWS evenly
spaced): a piece of the held-out text itself then scores near the mean |z| of a normal variable,
sqrt(2/pi) ~ 0.8, at any length, and another voice more. Samples longer than a quarter of the held-out
text take the spread of windows that long, scaled by sqrt(window / length) (a count's spread grows as the
root of its length). The held-out rates are estimates too, from a text of its own length, so z divides by
the root of both spreads' squares (a two-sample z): without it, samples as long as a small held-out text
read further from it than they are. Short samples: of the MFW most frequent words, only those the held-out text's rates
expect at least once in the samples' length count (a word expected 0.1 times scores |z| ~ 0.3 where it is
missing and ~3 where it is present, which made another author's 40-word pieces read closer than the
text's own); and word rates over a few dozen words are noisy whatever the measure (Eder 2015, "Does size
matter? Authorship attribution, small samples, big problem", Digital Scholarship in the Humanities 30(2):
attribution wants thousands of words), so many samples (`sample --num-samples 16`), or the trend over a
run's evaluations, say more than one evaluation's figure. docs/benchmarks/voice-report.md has the
measurements behind these choices.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bladegpt.data.dataset import TokenData
from bladegpt.errors import UserError
from bladegpt.runs import RUN_FILE, read_run

WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
LOOP_N = 4  # words in a loop's n-gram
MFW = 30  # most frequent words of the held-out text the distance may be taken over
SHORTEST = 20  # words: fewer samples' words get no style distance
MAX_WINDOWS = 4096  # held-out windows a spread is taken over


def words(text: str) -> list[str]:
    """A text's words, lowercased (the definition above)."""
    return [w.replace("’", "'") for w in WORD.findall(text.lower())]


def loops(samples: Iterable[str]) -> float | None:
    """The share of the samples' word 4-grams that repeat one earlier in the same sample, 0 to 1; None
    where no sample has 4 words."""
    total = repeated = 0
    for sample in samples:
        w = words(sample)
        grams = [tuple(w[i : i + LOOP_N]) for i in range(len(w) - LOOP_N + 1)]
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated / total if total else None


@dataclass
class StyleReference:
    """The held-out text's word statistics, made once (a run's evaluations share them): its most frequent
    words, each one's rate (share of the text's words) and positions, from which the spread of its rate over
    windows of any length is computed (and kept per length)."""

    vocabulary: dict[str, int]  # word -> its column, most frequent first
    rates: np.ndarray  # (MFW,) each word's share of the held-out words
    positions: list[np.ndarray]  # (MFW,) each word's places in the held-out text, in words, ascending
    n_words: int

    @classmethod
    def from_text(cls, text: str, mfw: int = MFW) -> StyleReference | None:
        """The statistics of `text`; None when it has fewer than 4 * SHORTEST words (too few windows)."""
        w = words(text)
        if len(w) < 4 * SHORTEST:
            return None
        top = [word for word, _ in Counter(w).most_common(mfw)]
        vocabulary = {word: k for k, word in enumerate(top)}
        column = np.array([vocabulary.get(word, -1) for word in w])
        positions = [np.flatnonzero(column == k) for k in range(len(top))]
        rates = np.array([len(p) for p in positions], dtype=np.float64) / len(w)
        return cls(vocabulary, rates, positions, len(w))

    def __post_init__(self) -> None:
        self._spreads: dict[int, np.ndarray] = {}

    def spread(self, length: int) -> np.ndarray:
        """(MFW,) the standard deviation of each word's rate in `length` words: over the held-out windows that
        long, or a quarter of the text long scaled by sqrt(window / length); at least half of one occurrence's
        rate (a word that no window varies in must not divide by zero)."""
        if length not in self._spreads:
            window = min(length, self.n_words // 4)
            count = min(MAX_WINDOWS, self.n_words - window + 1)
            starts = np.unique(np.linspace(0, self.n_words - window, count).round().astype(np.int64))
            counts = np.stack([np.searchsorted(p, starts + window) - np.searchsorted(p, starts) for p in self.positions])
            spread = counts.std(axis=1, ddof=1) / window * (window / length) ** 0.5
            self._spreads[length] = np.maximum(spread, 0.5 / length)
        return self._spreads[length]

    def distance(self, samples: Iterable[str]) -> float | None:
        """Burrows's Delta of the samples' pooled words from the held-out text, over the most frequent words
        expected at least once in that many words; None under SHORTEST words."""
        pooled = [w for sample in samples for w in words(sample)]
        if len(pooled) < SHORTEST:
            return None
        counts = np.zeros(len(self.rates))
        for word in pooled:
            if (k := self.vocabulary.get(word)) is not None:
                counts[k] += 1
        n = len(pooled)
        kept = self.rates * n >= 1
        kept[0] = True  # the most frequent word always counts
        spread = np.hypot(self.spread(n), self.spread(self.n_words))  # both rates are estimates: the difference's
        z = (counts / n - self.rates) / spread
        return float(np.abs(z[kept]).mean())


def report(samples: list[str], reference: StyleReference | None) -> dict:
    """An evaluation record's voice fields: `loops` (0 to 1) and `style` (Delta; None without a reference)."""
    share = loops(samples)
    style = reference.distance(samples) if reference is not None else None
    return {"loops": None if share is None else round(share, 4), "style": None if style is None else round(style, 3)}


def describe(loops_share: float | None, style: float | None, base: float | None = None) -> str:
    """The report's part of a sample's line, e.g. 'loops 4% · style distance 0.91 (base 1.32)'."""
    parts = ["loops " + ("-" if loops_share is None else f"{loops_share:.0%}")]
    if style is not None:
        parts.append(f"style distance {style:.2f}" + (f" (base {base:.2f})" if base is not None else ""))
    return " · ".join(parts)


def for_checkpoint(checkpoint: Path) -> tuple[StyleReference | None, float | None]:
    """The held-out text's statistics of the run a checkpoint was saved in, and the style distance its base's
    sample had (a run from a model); (None, None) for a checkpoint outside a run folder (an export) or a
    run whose dataset is gone or was prepared again since, whose held-out text is not known."""
    run_dir = Path(checkpoint).parent
    if not (run_dir / RUN_FILE).is_file():
        return None, None
    try:
        saved = read_run(run_dir)
        data = TokenData(Path(saved["dataset"]))
    except (UserError, KeyError, TypeError):  # a damaged run.json, a dataset gone: no held-out text
        return None, None
    if saved.get("dataset_fingerprint") not in (None, data.fingerprint):
        return None, None
    base = saved.get("base_voice")
    return StyleReference.from_text(data.target_text("val")), base.get("style") if isinstance(base, dict) else None
