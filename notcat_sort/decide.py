"""Stage 3: turn a cat probability into a label."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Label(str, Enum):
    CAT = "cat"
    NOT_CAT = "not-cat"
    UNSURE = "unsure"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


SORTED_LABELS = (Label.CAT, Label.NOT_CAT, Label.UNSURE)


@dataclass(frozen=True)
class Policy:
    """`threshold` splits cat from not-cat; probabilities inside `unsure` (low, high) go to unsure/."""

    threshold: float
    unsure: tuple[float, float] | None = None

    def decide(self, p_cat: float | None) -> Label:
        if p_cat is None:
            return Label.ERROR
        if self.unsure is not None and self.unsure[0] <= p_cat <= self.unsure[1]:
            return Label.UNSURE
        return Label.CAT if p_cat >= self.threshold else Label.NOT_CAT
