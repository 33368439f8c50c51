"""The core vocabulary is typed, and each stage has its one place: statuses, actions and plan
kinds are enums; both views are Views; report rows are built by the report; tagging is a plan."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from photos import photos

from notcat_sort.actions import Action, Kind, OnConflict, Outcome, Tagging, execute, plan, preview
from notcat_sort.actions.tag import _parse as parse_xmp
from notcat_sort.actions.tag import keywords, untag
from notcat_sort.classify import Prediction
from notcat_sort.decide import Label
from notcat_sort.output import View
from notcat_sort.output.plain import PlainView
from notcat_sort.output.rich_view import RichView
from notcat_sort.pipeline import Companion, Result
from notcat_sort.report import Status, rows_for, run_key
from notcat_sort.scan import Candidate


def test_statuses_actions_and_plan_kinds_are_enums() -> None:
    for vocabulary in (Status, Action, Kind):
        assert issubclass(vocabulary, Enum) and issubclass(vocabulary, str)
    assert [action for action in Action if action.places_files] == [Action.MOVE, Action.COPY, Action.LINK]
    assert f"{Status.DONE}" == "done" and Status("interrupted") is Status.INTERRUPTED


def test_both_views_are_views() -> None:
    for view in (PlainView(), RichView()):
        assert isinstance(view, View)


def test_the_report_builds_the_rows_of_a_result(tmp_path: Path) -> None:
    image, sidecar = tmp_path / "a.jpg", tmp_path / "a.jpg.xmp"
    result = Result(Prediction(Candidate(image, tmp_path), 0.75, "ab" * 32), Label.CAT,
                    Outcome(Status.DONE, tmp_path / "cat" / "a.jpg"),
                    (Companion(sidecar, "cd" * 32, Outcome(Status.DONE, tmp_path / "cat" / "a.jpg.xmp")),))

    rows = rows_for(result, "move")

    assert [(row.path, row.destination, row.sha256) for row in rows] == [
        (str(image), str(tmp_path / "cat" / "a.jpg"), "ab" * 32),
        (str(sidecar), str(tmp_path / "cat" / "a.jpg.xmp"), "cd" * 32),
    ]
    assert {(row.label, row.p_cat, row.action, row.status) for row in rows} == {("cat", "0.7500", "move", "done")}
    assert not hasattr(Result, "rows")  # formatting lives in the report, not in the pipeline's data


def test_tagging_is_a_kind_of_plan(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    image, sidecar = tmp_path / "a.jpg", tmp_path / "a.jpg.xmp"
    image.write_bytes(photos(1)[0].read_bytes())
    run = run_key(tmp_path / "report.csv")
    planned = plan(Action.TAG, image, sidecar, None, OnConflict.RENAME, tagging=Tagging("cat", 0.9, "model 1", run))

    assert (planned.kind, planned.target, planned.changes_files) == (Kind.TAG, sidecar, True)
    assert preview(planned).status is Status.PLANNED and not sidecar.exists()  # a dry run changes nothing
    assert execute(planned).status is Status.DONE and keywords(parse_xmp(sidecar.read_bytes())) == ["cat"]
    assert preview(planned) == Outcome(Status.SKIPPED, sidecar, "already tagged")
    assert untag(image, sidecar, run).status is Status.DONE and not sidecar.exists()
