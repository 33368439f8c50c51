"""The review's list: filtered, ordered and paged on the server, so that a page of a library of
tens of thousands of photos asks only for what it shows.

A query's filters come from the URL, one parameter per filter (`label=cat&label=unsure`,
`p_cat_min=0.2&p_cat_max=0.8`, `folder=2020`, `cat=Tom`, `breed=Siamese`, `mood=happy`). The photos that match, in order, are
kept as a *view* with an id: the pages of one view stay the same while photos are corrected
(a photo corrected out of the filter stays where it was, showing its new label, until the
filter is asked for again), so paging never skips or repeats one. Counts are always as of now.

Every filter is one `Filter` in FILTERS, and the page builds its controls from their
description (`describe`). A column of the report becomes a filter with one line, e.g. for a
`breed` column and its probability `breed_p`:

    Filter("breed", Kind.CHOICE, column("breed")),
    Filter("breed_p", Kind.RANGE, number("breed_p")),
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from notcat_sort.decide import Label
from notcat_sort.serve.review import Entry, Review

MAX_PAGE = 500
DEFAULT_PAGE = 200
_KEPT_VIEWS = 16


class Kind(str, Enum):
    """How a filter is given: `CHOICE` one or more values (`name=a&name=b`, any of them), `RANGE`
    bounds (`name_min`, `name_max`, either or both), `TEXT` a part of the value (any case)."""

    CHOICE = "choice"
    RANGE = "range"
    TEXT = "text"


Value = Callable[[Entry], "str | float | None"]


@dataclass(frozen=True)
class Filter:
    name: str
    kind: Kind
    value: Value
    label: str = ""  # how the page names it; the name by default

    def parse(self, query: Mapping[str, Sequence[str]]) -> Callable[[Entry], bool] | None:
        """The test a photo must pass for the query's values of this filter; None when the query has none.
        Raises ValueError for a value that is no value of this filter's kind."""
        if self.kind is Kind.CHOICE:
            wanted = {value for value in query.get(self.name, ()) if value != ""}
            return (lambda entry: self.value(entry) in wanted) if wanted else None
        if self.kind is Kind.TEXT:
            parts = [value.casefold() for value in query.get(self.name, ()) if value]
            return (lambda entry: all(part in str(self.value(entry) or "").casefold() for part in parts)) if parts else None
        low, high = (_number(query, f"{self.name}_{end}") for end in ("min", "max"))
        if low is None and high is None:
            return None

        def within(entry: Entry) -> bool:
            value = self.value(entry)
            return isinstance(value, float) and (low is None or value >= low) and (high is None or value <= high)
        return within


def column(name: str) -> Value:
    """A report column, as text."""
    return lambda entry: getattr(entry.row, name)


def number(name: str) -> Value:
    """A report column that holds a number (empty: none)."""
    def read(entry: Entry) -> float | None:
        text = getattr(entry.row, name)
        return float(text) if text else None
    return read


FILTERS: tuple[Filter, ...] = (
    Filter("label", Kind.CHOICE, lambda entry: entry.label.value),
    Filter("run_label", Kind.CHOICE, lambda entry: entry.run_label.value, "run said"),
    Filter("p_cat", Kind.RANGE, lambda entry: entry.p_cat, "p(cat)"),
    Filter("folder", Kind.TEXT, lambda entry: entry.folder),
    Filter("cat", Kind.CHOICE, lambda entry: entry.known or entry.cat),
    Filter("breed", Kind.CHOICE, lambda entry: entry.breed),
    Filter("mood", Kind.CHOICE, column("mood"), "mood (a guess)"),
)


def _number(query: Mapping[str, Sequence[str]], name: str) -> float | None:
    given = [value for value in query.get(name, ()) if value != ""]
    if not given:
        return None
    try:
        return float(given[-1])
    except ValueError:
        raise ValueError(f"{name} must be a number, not {given[-1]!r}") from None


class Order(str, Enum):
    """The order of a view: `doubt` (unsure first, then cat and not-cat, each from the least sure),
    `path` (as the photos lie in the library), `p_cat` (from the most sure not-cat up)."""

    DOUBT = "doubt"
    PATH = "path"
    P_CAT = "p_cat"


_GROUPS = {Label.UNSURE: 0, Label.CAT: 1, Label.NOT_CAT: 2, Label.ERROR: 3}


def _key(order: Order) -> Callable[[Entry], tuple]:
    if order is Order.PATH:
        return lambda entry: (entry.row.path, entry.id)
    if order is Order.P_CAT:
        return lambda entry: (entry.p_cat is None, entry.p_cat or 0.0, entry.id)

    def doubt(entry: Entry) -> tuple:
        p = entry.p_cat if entry.p_cat is not None else 0.0
        return _GROUPS[entry.run_label], -p if entry.run_label is Label.NOT_CAT else p, entry.id
    return doubt


@dataclass(frozen=True)
class View:
    id: str
    ids: list[int]  # the photos that matched, in order


class Listing:
    """Views over a review's photos, the latest few kept."""

    def __init__(self, review: Review, filters: Sequence[Filter] = FILTERS) -> None:
        self.review = review
        self.filters = tuple(filters)
        self._views: OrderedDict[str, View] = OrderedDict()
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._facets: tuple[int, dict[str, dict[str, int]]] | None = None
        self._orders: dict[Order, list[Entry]] = {}

    def view(self, query: Mapping[str, Sequence[str]]) -> View:
        """The view named by the query's `view`, if still kept; else a new one of its filters and `order`.
        Raises ValueError for a filter value or order it cannot use."""
        wanted = (query.get("view") or [""])[-1]
        with self._lock:
            if wanted in self._views:
                self._views.move_to_end(wanted)
                return self._views[wanted]
        tests = [test for test in (rule.parse(query) for rule in self.filters) if test is not None]
        try:
            order = Order((query.get("order") or [Order.DOUBT.value])[-1])
        except ValueError:
            raise ValueError(f"order is one of {', '.join(item.value for item in Order)}") from None
        if order not in self._orders:  # what orders a photo (its path, what the run said) never changes
            self._orders[order] = sorted(self.review.entries, key=_key(order))
        ids = [entry.id for entry in self._orders[order] if all(test(entry) for test in tests)]
        with self._lock:
            made = View(f"v{next(self._numbers)}", ids)
            self._views[made.id] = made
            while len(self._views) > _KEPT_VIEWS:
                self._views.popitem(last=False)
        return made

    def page(self, view: View, offset: int, limit: int) -> list[Entry]:
        return [self.review.entries[entry_id] for entry_id in view.ids[offset:offset + max(0, min(limit, MAX_PAGE))]]

    def describe(self) -> list[dict[str, object]]:
        """The filters for the page to offer, with each choice's values and how many photos have each now."""
        version = self.review.version
        if self._facets is None or self._facets[0] != version:
            facets: dict[str, Counter[str]] = {rule.name: Counter() for rule in self.filters if rule.kind is Kind.CHOICE}
            for entry in self.review.entries:
                for rule in self.filters:
                    if rule.kind is Kind.CHOICE:
                        facets[rule.name][str(rule.value(entry) or "")] += 1
            self._facets = version, {name: dict(sorted(found.items())) for name, found in facets.items()}
        values = self._facets[1]
        described: list[dict[str, object]] = []
        for rule in self.filters:
            described.append({"name": rule.name, "kind": rule.kind.value, "label": rule.label or rule.name})
            if rule.kind is Kind.CHOICE:
                described[-1]["values"] = {value: count for value, count in values[rule.name].items() if value}
        return described

