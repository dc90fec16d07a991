"""labkit.studies.study, the one multi-seed study behind every record: runs in parallel, resumes,
refuses a stale / broken / incomplete record at load, summarises min / mean / max.

The run function here is a fast fake (it writes a file and returns a number), so the real worker
processes, the record file and the resume path are exercised in seconds."""

import json
import time
from pathlib import Path

import pytest

from labkit import LabkitError
from labkit.studies import study

#: What the fake study "depends on"; a test changes it to make a record stale.
SETTINGS = {"learning_rate": 0.1}


def fake_run(point: dict, seed: int) -> dict:
    """Logs the call in ``point["dir"]``; fails on seed 1 while a ``fail`` file exists there; with
    ``together`` waits (up to 20 s) until every seed of the point has started."""
    folder = Path(point["dir"])
    (folder / f"started {point['x']} {seed}").touch()
    with open(folder / "calls.txt", "a") as f:
        f.write(f"{point['x']} {seed}\n")
    if (folder / "fail").exists() and seed == 1:
        raise RuntimeError("boom")
    if point.get("together"):
        deadline = time.monotonic() + 20
        while len(list(folder.glob(f"started {point['x']} *"))) < point["together"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the other seeds never started: the runs were not parallel")
            time.sleep(0.05)
    return {"value": point["x"] * 10 + seed}


def fake_baseline() -> int:
    return 7


def _settings() -> dict:
    return dict(SETTINGS)


def _study(tmp_path, xs=(1, 2), seeds=(0, 1, 2), **point) -> study.Study:
    return study.Study(
        name="fake",
        points=tuple({"x": x, "dir": str(tmp_path), **point} for x in xs),
        seeds=seeds,
        run=fake_run,
        settings=_settings,
        baseline=fake_baseline,
    )


def _calls(tmp_path) -> list[str]:
    path = tmp_path / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_make_writes_one_record_that_loads(tmp_path):
    s = _study(tmp_path)
    out = tmp_path / "fake.json"
    record = s.make(out)
    assert record == s.load(out) == json.loads(out.read_text())
    assert record["study"] == "fake" and record["complete"] and record["baseline"] == 7
    assert record["settings"] == {
        "points": [{"x": 1, "dir": str(tmp_path)}, {"x": 2, "dir": str(tmp_path)}],
        "seeds": [0, 1, 2],
        "learning_rate": 0.1,
    }
    assert [(r["x"], r["seed"], r["value"]) for r in record["runs"]] == [
        (1, 0, 10), (1, 1, 11), (1, 2, 12), (2, 0, 20), (2, 1, 21), (2, 2, 22)
    ]  # fmt: skip
    assert [r["value"] for r in study.runs_of(record, s.points[1])] == [20, 21, 22]
    assert sorted(_calls(tmp_path)) == ["1 0", "1 1", "1 2", "2 0", "2 1", "2 2"]


def test_a_failed_run_keeps_the_others_and_resume_runs_only_the_missing(tmp_path):
    s = _study(tmp_path)
    out = tmp_path / "fake.json"
    (tmp_path / "fail").touch()
    with pytest.raises(LabkitError, match="seed 1 failed .*RuntimeError: boom.*--resume"):
        s.make(out)
    kept = {(r["x"], r["seed"]) for r in json.loads(out.read_text())["runs"]}
    assert (1, 0) in kept and (1, 1) not in kept  # the runs before the failure are on disk
    assert not json.loads(out.read_text())["complete"]
    with pytest.raises(LabkitError, match="incomplete .*finish it with .* --resume"):
        s.load(out)
    before = len(_calls(tmp_path))
    (tmp_path / "fail").unlink()
    record = s.make(out, resume=True)
    assert record["complete"] and len(record["runs"]) == 6
    missing = {(x, seed) for x in (1, 2) for seed in (0, 1, 2)} - kept
    assert sorted(_calls(tmp_path)[before:]) == sorted(f"{x} {seed}" for x, seed in missing)
    assert s.load(out)["runs"] == record["runs"]


def test_resume_refuses_a_record_made_with_other_settings(tmp_path, monkeypatch):
    s = _study(tmp_path, seeds=(0,))
    out = tmp_path / "fake.json"
    s.make(out)
    monkeypatch.setitem(SETTINGS, "learning_rate", 0.2)
    with pytest.raises(LabkitError, match="other settings .*learning_rate.*afresh with --replace"):
        s.make(out, resume=True)
    assert s.make(out, replace=True)["settings"]["learning_rate"] == 0.2


def test_resume_runs_only_the_points_a_grid_gained(tmp_path):
    """A grid that gains a point (here one with an extra field, like notebook 08's rescaled text
    init next to the plain one) keeps every recorded run and runs only the new point's seeds;
    load() says to --resume, not to start afresh."""
    out = tmp_path / "fake.json"
    old = _study(tmp_path, xs=(1,), seeds=(0, 1))
    first = old.make(out)
    grown = study.Study(
        name="fake",
        points=(*old.points, {**old.points[0], "extra": True}),
        seeds=(0, 1),
        run=fake_run,
        settings=_settings,
        baseline=fake_baseline,
    )
    with pytest.raises(LabkitError, match=r"changed: points\); run the new points with --resume"):
        grown.load(out)
    before = len(_calls(tmp_path))
    record = grown.make(out, resume=True)
    assert sorted(_calls(tmp_path)[before:]) == ["1 0", "1 1"]  # the new point's two seeds only
    assert [r for r in record["runs"] if "extra" not in r] == first["runs"]
    assert len(study.runs_of(record, grown.points[1])) == 2 and len(record["runs"]) == 4
    assert grown.load(out)["settings"]["points"] == list(grown.points)
    assert [r.get("extra", False) for r in record["runs"]] == [False, False, True, True]


def test_load_refuses_a_stale_record(tmp_path, monkeypatch):
    out = tmp_path / "fake.json"
    _study(tmp_path, seeds=(0,)).make(out)
    monkeypatch.setitem(SETTINGS, "learning_rate", 0.2)
    with pytest.raises(LabkitError, match=r"fake.json was made with other settings than today's "
                       r"\(changed: learning_rate\); re-make it with .*benchmarks/fake.py"):  # fmt: skip
        _study(tmp_path, seeds=(0,)).load(out)
    monkeypatch.setitem(SETTINGS, "learning_rate", 0.1)
    with pytest.raises(LabkitError, match=r"changed: points"):
        _study(tmp_path, xs=(1, 2, 3), seeds=(0,)).load(out)
    with pytest.raises(LabkitError, match=r"changed: seeds"):
        _study(tmp_path, seeds=(0, 1)).load(out)
    assert _study(tmp_path, seeds=(0,)).load(out)["complete"]


def test_load_errors_are_one_line(tmp_path):
    s = _study(tmp_path)
    with pytest.raises(LabkitError, match="no record at .*missing.json; make it with"):
        s.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LabkitError, match="not valid JSON"):
        s.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"study": "other", "runs": []}))
    with pytest.raises(LabkitError, match="not a record of the study 'fake'"):
        s.load(tmp_path / "other.json")
    with pytest.raises(LabkitError, match="jobs is a number of worker processes"):
        s.make(tmp_path / "x.json", jobs=0)
    with pytest.raises(LabkitError, match="other.json exists; accepted: --resume .* or --replace"):
        s.make(tmp_path / "other.json")  # never replaced silently
    assert json.loads((tmp_path / "other.json").read_text())["study"] == "other"
    with pytest.raises(LabkitError, match="do not go together"):
        s.make(tmp_path / "x.json", resume=True, replace=True)


def test_runs_are_parallel(tmp_path):
    """Each seed waits until the other has started: this passes only with two workers at once."""
    s = _study(tmp_path, xs=(1,), seeds=(0, 1), together=2)
    start = time.perf_counter()
    record = s.make(tmp_path / "fake.json", jobs=2)
    assert [r["value"] for r in record["runs"]] == [10, 11]
    assert time.perf_counter() - start < 60


def test_spread_and_comparisons():
    s = study.spread([0.5, 0.25, 0.75])
    assert (s.min, s.mean, s.max, s.half_range) == (0.25, 0.5, 0.75, 0.25)
    assert s.values == (0.5, 0.25, 0.75)
    with pytest.raises(LabkitError, match="no values"):
        study.spread([])
    assert study.within(0.5, [0.4, 0.6]) and not study.within(0.7, [0.4, 0.6])
    assert study.within(0.65, [0.4, 0.6], slack=0.05)
    assert study.ranges_apart([0.9, 0.8], [0.5, 0.7])
    assert not study.ranges_apart([0.9, 0.6], [0.5, 0.7])


def test_a_run_may_not_overwrite_its_point(tmp_path):
    s = study.Study(
        "fake", ({"value": 1, "dir": str(tmp_path), "x": 0},), (0,), fake_run, _settings
    )
    with pytest.raises(LabkitError, match=r"returned fields of its point: \['value'\]"):
        s.make(tmp_path / "fake.json")
