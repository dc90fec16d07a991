"""Fault tests: ``python -m labkit tune`` (two processes on one study, Ctrl-C and resume), and
the course tooling, data and zoo under a full disk, read-only folders and Ctrl-C (below).

The search command runs around a trivial objective (``tests/quick_tune.py``: sleep, return a
number), so what is checked is the protocol itself (no live trial failed, exactly N COMPLETE
trials, different parameters per worker, one line on Ctrl-C) and each test takes seconds.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import optuna
import pytest
import torch
from nbformat.v4 import new_code_cell
from optuna.trial import TrialState
from quick_tune import quick_objective  # tests/quick_tune.py (pytest puts tests/ on sys.path)

from labkit import DATA_DIR, REPO_ROOT, LabkitError, files, hardware
from labkit import cli as labkit_cli
from labkit.course import build_zoo, bundle, runner, slides
from labkit.data import generator, loaders
from labkit.training.tuning import cli, coordination

CLI = [sys.executable, str(REPO_ROOT / "tests" / "quick_tune.py")]
ENV = {
    **os.environ,
    "LABKIT_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "PYTHONPATH": str(REPO_ROOT),
}


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _nothing_left_running():
    """A failed or timed-out test must not leave its ``tune`` processes running."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def _start(url: str, name: str, n: int, seconds: float) -> subprocess.Popen:
    """The search command on a trivial objective whose trials last ``seconds``."""
    argv = ["--storage", url, "--study-name", name, "--n-trials", str(n), "--budget", "smoke"]
    STARTED.append(
        subprocess.Popen(
            CLI + argv,
            cwd=REPO_ROOT,
            env={**ENV, "LABKIT_TEST_TRIAL_SECONDS": str(seconds)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_terminal_sigint,
        )
    )
    return STARTED[-1]


def _terminal_sigint() -> None:
    """In the child: Ctrl-C's default disposition, as a terminal starts a command. An ignored
    SIGINT is inherited across exec (and Python then installs no KeyboardInterrupt handler), and
    a shell without job control ignores it in every command it starts with `&`, as CI runners
    and `bash .ci/run &` do: pytest, and each command it starts, then begin with it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _trials(url: str, name: str):
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _wait_for(url: str, name: str, states: set, proc: subprocess.Popen, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        try:
            if states <= {t.state for t in _trials(url, name)}:
                return True
        except Exception:  # not created yet, or busy
            continue
    return False


def _check_study(url: str, name: str, n: int):
    trials = _trials(url, name)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n, [(t.number, t.state.name) for t in trials]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == n  # no config twice
    return trials


def test_two_processes_started_together_on_a_new_study_share_it(tmp_path):
    url, n = f"sqlite:///{tmp_path / 'new.db'}", 3
    procs = [_start(url, "s", n, seconds=0.3) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "Traceback" not in err and "cannot open storage" not in err
        assert "marked FAIL" not in out + err  # nobody's live trial was failed
    trials = _check_study(url, "s", n)
    assert not [t for t in trials if t.state == TrialState.FAIL]


def test_second_process_joins_a_running_search_without_failing_its_trial(tmp_path):
    url, n = f"sqlite:///{tmp_path / 'join.db'}", 4
    first = _start(url, "s", n, seconds=2.0)
    assert _wait_for(url, "s", {TrialState.RUNNING}, first)
    second = _start(url, "s", n, seconds=2.0)
    (out1, err1), (out2, err2) = first.communicate(timeout=120), second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err1[-1500:] + err2[-1500:]
    assert "marked FAIL" not in out1 + err1 + out2 + err2
    trials = _check_study(url, "s", n)
    assert not [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs[coordination.WORKER_KEY] for t in trials)


def test_ctrl_c_is_one_line_exit_130_and_the_search_resumes(tmp_path, capsys):
    # six 2-second trials: Ctrl-C lands in the second, with trials to go (with three, a slow poll
    # could see the last one running and the search end before the signal: exit 0, seen once)
    url, n = f"sqlite:///{tmp_path / 'int.db'}", 6
    proc = _start(url, "s", n, seconds=2.0)
    assert _wait_for(url, "s", {TrialState.COMPLETE, TrialState.RUNNING}, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("labkit tune: interrupted; study 's' keeps ") and "same command" in last
    before = {t.number: t.value for t in _trials(url, "s") if t.state == TrialState.COMPLETE}
    assert before and not [t for t in _trials(url, "s") if t.state == TrialState.RUNNING]

    argv = ["--storage", url, "--study-name", "s", "--n-trials", str(n), "--budget", "smoke"]
    assert cli.cli_main(argv, objective=quick_objective) == 0
    after = _check_study(url, "s", n)
    assert all(after[k].value == v for k, v in before.items())


# =================================================================================================
# The course tooling, data and zoo under faults (second reliability sweep: full disk, read-only
# folders, Ctrl-C, damaged copies). A full disk is a small tmpfs where the tests run as root
# (they skip cleanly otherwise); the same writes also meet a monkeypatched write error, which
# needs no root. Ids follow the sweep (D = full disk, C2 = course, S3 = slides, B = bundle,
# Z = build-zoo, DS = data, T2 = threads).
# =================================================================================================


@pytest.fixture
def tmpfs(tmp_path):
    """``make(name, size, ro=False)``: a small tmpfs mounted at ``tmp_path/name`` (root only),
    unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a tmpfs (a full disk, a read-only folder) needs root")
    mounts = []

    def make(name: str, size: str = "3m", ro: bool = False) -> Path:
        path = tmp_path / name
        path.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(path)
        return path

    yield make
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s file system, leaving about ``leave`` bytes free."""
    st = os.statvfs(folder)
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


@pytest.fixture
def enospc(monkeypatch):
    """Every write through labkit.files fails with "No space left on device" once its data is in
    the temporary file (the monkeypatched write error: no root needed)."""

    def fail(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", fail)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): files.sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def toy_notebook(path: Path, *sources: str) -> Path:
    nbformat.write(nbformat.v4.new_notebook(cells=[new_code_cell(s) for s in sources]), path)
    return path


def copy_data(target: Path) -> Path:
    for name in ("chat", "corpus", "sentiment"):
        shutil.copytree(DATA_DIR / name, target / name)
    shutil.copy(DATA_DIR / "README.md", target / "README.md")
    return target


def test_DS11_build_data_on_a_full_disk_keeps_every_data_file(tmpfs, monkeypatch):
    data = copy_data(tmpfs("data", size="4m"))
    before = digests(data)
    fill(data, leave=400_000)  # the new corpus (2.5 MB) does not fit
    with pytest.raises(LabkitError) as err:
        generator.write_all(data)
    assert "No space left on device" in one_line(err) and "kept as it was" in str(err.value)
    (data / "filler").unlink()
    assert digests(data) == before  # no file cut, no temporary file left
    monkeypatch.setattr(loaders, "DATA_DIR", data)
    assert len(loaders.load_corpus("train")) == 6000 and len(loaders.load_chat("train")) == 170


def test_DS11_build_data_with_a_write_error_keeps_every_data_file(tmp_path, enospc):
    data = copy_data(tmp_path / "data")
    before = digests(data)
    with pytest.raises(LabkitError, match="No space left on device"):
        generator.write_all(data)
    assert digests(data) == before


def test_C2_19_course_inplace_on_a_full_disk_keeps_the_notebook(tmpfs, tmp_path):
    folder = tmpfs("nb", size="3m")
    nb = toy_notebook(folder / "01_mine.ipynb", "print('y' * 2_000_000)")
    nb.write_text(
        nb.read_text().replace(
            '"cells": [',
            '"cells": [{"cell_type": "markdown", "id": "m", "metadata": {}, "source": "# Mine"}, ',
            1,
        )
    )
    before = nb.read_bytes()
    fill(folder, leave=1_000_000)
    with pytest.raises(LabkitError) as err:
        runner.run_course([nb], inplace=True, out_dir=tmp_path / "build", timeout=60)
    assert "No space left on device" in one_line(err) and "01_mine.ipynb" in str(err.value)
    assert nb.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == [
        "01_mine.ipynb",
        "filler",
    ]


def test_C2_19_course_inplace_with_a_write_error_keeps_the_notebook(tmp_path, enospc):
    nb = toy_notebook(tmp_path / "01_mine.ipynb", "print(1)")
    before = nb.read_bytes()
    with pytest.raises(LabkitError, match="No space left on device"):
        runner.run_course([nb], inplace=True, out_dir=tmp_path / "build", timeout=60)
    assert nb.read_bytes() == before and [p.name for p in tmp_path.glob("*.ipynb*")] == [nb.name]


def test_D03_solution_copies_on_a_full_disk_leave_no_cut_copy(tmpfs):
    out = tmpfs("nbval", size="1m")
    nb = toy_notebook(out.parent / "05_big.ipynb", "x = 1")
    nbformat.write(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("z" * 2_000_000)]), nb
    )
    with pytest.raises(LabkitError) as err:
        runner.write_solution_copies([nb], out)
    assert "No space left on device" in one_line(err)
    assert list(out.iterdir()) == []


def test_D04_slides_into_a_full_folder_is_one_line(tmpfs, tmp_path):
    out = tmpfs("slides", size="1m")
    fill(out, leave=50_000)
    nb = toy_notebook(tmp_path / "04_ok.ipynb", "1")
    with pytest.raises(LabkitError) as err:
        slides.build_decks([nb], out)
    assert "No space left on device" in one_line(err) and "reveal.js" in str(err.value)


def test_D05_bundle_on_a_full_disk_leaves_no_cut_archive(tmpfs):
    out = tmpfs("bundle", size="2m")
    with pytest.raises(LabkitError) as err:
        bundle.pack_repository(out / "course.tar.gz")
    assert "No space left on device" in one_line(err)
    assert list(out.iterdir()) == []


def test_D05_bundle_with_a_write_error_leaves_no_archive(tmp_path, enospc):
    with pytest.raises(LabkitError, match="No space left on device"):
        bundle.pack_repository(tmp_path / "course.tar.gz")
    assert list(tmp_path.iterdir()) == []


def test_D02_build_zoo_on_a_full_disk_keeps_the_old_model(tmpfs):
    out = tmpfs("zoo", size="2m") / "zoo-llama"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the old model")
    (out / "provenance.json").write_text("{}")
    with pytest.raises(LabkitError) as err:
        build_zoo.build_into(
            out, force=True, steps=1, batch=2, threads=1, log_every=0, max_texts=60
        )
    assert "No space left on device" in one_line(err) and "kept as it was" in str(err.value)
    assert (out / "model.safetensors").read_bytes() == b"the old model"
    assert [p.name for p in out.parent.iterdir()] == ["zoo-llama"]


def test_ZBZ2_a_rebuilt_zoo_is_readable_as_the_umask_allows(tmp_path):
    out = tmp_path / "zoo-llama"
    build_zoo.build_into(out, steps=1, batch=2, threads=1, log_every=0, max_texts=60)
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name for p in out.iterdir()} <= build_zoo.BUILT_FILES
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}


def test_ZBZ1_build_zoo_force_never_removes_a_users_files(tmp_path, capsys):
    folder = tmp_path / "x"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("draft")
    (folder / "sub" / "data.csv").write_text("1")
    before = digests(folder)
    assert labkit_cli.main(["build-zoo", "--out", str(folder), "--force", "--steps", "1"]) == 2
    assert digests(folder) == before
    assert "never other files" in capsys.readouterr().err


def test_C2_16_course_into_a_read_only_folder_fails_before_running(tmpfs, tmp_path):
    ran = tmp_path / "ran"
    nb = toy_notebook(tmp_path / "04_ok.ipynb", f"open({str(ran)!r}, 'w').close()")
    with pytest.raises(LabkitError) as err:
        runner.run_course([nb], out_dir=tmpfs("build", size="1m", ro=True), timeout=60)
    assert "Read-only file system" in one_line(err) and not ran.exists()


def test_C2_17_S3_11_B_exercises_slides_and_bundle_into_a_read_only_folder(
    tmpfs, tmp_path, monkeypatch
):
    ro = tmpfs("build", size="1m", ro=True)
    nb = toy_notebook(tmp_path / "04_ok.ipynb", "1")
    monkeypatch.setattr(runner, "BUILD_DIR", ro)
    for call in (
        lambda: runner.cli_main(["--exercises", str(nb)]),
        lambda: slides.build_decks([nb], ro / "slides"),
        lambda: bundle.build(ro / "bundle", wheels=False),
    ):
        with pytest.raises(LabkitError) as err:
            call()
        assert "Read-only file system" in one_line(err)


def test_C2_02_a_one_notebook_run_from_another_folder_keeps_the_course_rows(tmp_path):
    out = tmp_path / "build"
    out.mkdir()
    course = [
        {"notebook": p.name, "seconds": 10.0, "status": "ok"} for p in runner.course_notebooks()
    ]
    (out / "course-report.json").write_text(json.dumps({"notebooks": course}))
    other = tmp_path / "nb"
    other.mkdir()
    report = runner.run_course([toy_notebook(other / "99_ok.ipynb", "1")], out_dir=out, timeout=60)
    assert len(report["notebooks"]) == len(course) + 1
    (out / "course-report.json").write_text("[1, 2]")  # C2-15: not a report: rebuilt
    report = runner.run_course([other / "99_ok.ipynb"], out_dir=out, timeout=60)
    assert [r["notebook"] for r in report["notebooks"]] == ["99_ok.ipynb"]


def _kernel_pid(path: Path, deadline: float) -> int | None:
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.2)
    return None


@pytest.mark.parametrize("to_group", [True, False], ids=["terminal", "process"])
def test_C2_21_ctrl_c_stops_the_course_run(tmp_path, to_group):
    """Ctrl-C in a terminal (SIGINT to the group) or to the runner alone stops the whole run:
    exit 130, one last line, the next notebook never starts and no kernel is left."""
    pid_file, second = tmp_path / "kernel.pid", tmp_path / "second-ran"
    first = toy_notebook(
        tmp_path / "02_sleep.ipynb",
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(300)",
    )
    nxt = toy_notebook(tmp_path / "04_ok.ipynb", f"open({str(second)!r}, 'w').close()")
    proc = subprocess.Popen(
        [sys.executable, "-m", "labkit", "course", str(first), str(nxt)],
        cwd=REPO_ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    STARTED.append(proc)
    kernel = _kernel_pid(pid_file, time.monotonic() + 120)
    assert kernel is not None, "the first notebook never started"
    try:
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("labkit course: interrupted (Ctrl-C) in 02_sleep.ipynb"), last
        assert not second.exists()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{kernel}").exists():
            time.sleep(0.2)
        assert not Path(f"/proc/{kernel}").exists(), "the kernel was left running"
    finally:
        if Path(f"/proc/{kernel}").exists():  # a failed check must not leave the kernel
            os.kill(kernel, signal.SIGKILL)


def test_B01_bundle_check_never_removes_a_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "b"
    (out / "wheelhouse").mkdir(parents=True)
    (out / "check").mkdir()
    (out / "check" / "precious.txt").write_text("notes")
    assert labkit_cli.main(["bundle", "--check", "--out", str(out)]) == 2
    assert "no bundle in" in capsys.readouterr().err
    (out / "course.tar.gz").write_bytes(b"")
    assert labkit_cli.main(["bundle", "--check", "--out", str(out)]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (out / "check" / "precious.txt").read_text() == "notes"


def test_B05_bundle_refuses_damaged_zoo_weights(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    shutil.copytree(DATA_DIR, repo / "data")
    weights = repo / "data" / "models" / "zoo-llama" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[5000:5004] = b"\xff\xff\xff\xff"
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(bundle, "tracked_files", lambda repo: ["data/README.md"])
    with pytest.raises(LabkitError) as err:
        bundle.pack_repository(tmp_path / "out" / "course.tar.gz", repo)
    assert "zoo-llama/model.safetensors has sha256" in one_line(err)
    assert not (tmp_path / "out" / "course.tar.gz").exists()


def test_T2_33_labkit_threads_is_capped_at_the_usable_cpus(monkeypatch):
    monkeypatch.setenv("LABKIT_THREADS", "1000")
    try:
        with pytest.warns(UserWarning, match="1000 threads asked for"):
            n = hardware.set_threads()
        assert n == hardware.usable_cpus() == torch.get_num_threads()
    finally:
        monkeypatch.delenv("LABKIT_THREADS")
        hardware.set_threads(1)


def test_T2_19_a_second_ctrl_c_does_not_cut_the_interrupted_line(tmp_path, monkeypatch, capsys):
    """The double press: a second SIGINT while the command says what the study keeps is ignored
    (no KeyboardInterrupt traceback), and Ctrl-C works again afterwards."""

    def interrupted(trial):
        raise KeyboardInterrupt

    def second_press(storage, name):
        signal.raise_signal(signal.SIGINT)  # ignored while the line is written
        return 0

    monkeypatch.setattr(cli, "_stored_complete", second_press)
    argv = ["--storage", f"sqlite:///{tmp_path / 'i.db'}", "--study-name", "s", "--n-trials", "2"]
    before = signal.getsignal(signal.SIGINT)
    assert cli.cli_main([*argv, "--budget", "smoke"], objective=interrupted) == 130
    assert signal.getsignal(signal.SIGINT) is before
    assert "interrupted; study 's' keeps 0 of 2" in capsys.readouterr().err


def test_T2_01_T2_13_a_storage_failing_mid_search_is_one_line(tmp_path):
    """A full disk or a read-only folder mid-search (sqlite's error, which Optuna may wrap or
    follow with its own AssertionError): one line saying what the study keeps, no traceback."""
    import sqlite3

    def full(trial):
        if trial.number == 1:
            try:
                raise sqlite3.OperationalError("database or disk is full")
            except sqlite3.OperationalError:
                raise AssertionError("Should not reach.") from None  # as Optuna ends
        return 1.0

    url = f"sqlite:///{tmp_path / 'full.db'}"
    argv = ["--storage", url, "--study-name", "s", "--n-trials", "3", "--budget", "smoke"]
    with pytest.raises(LabkitError) as err:
        cli.cli_main(argv, objective=full)
    msg = str(err.value)
    assert "\n" not in msg and "the storage failed during the search" in msg, msg
    assert "database or disk is full" in msg and "keeps 1 of 3 complete trials" in msg, msg
    assert "run the same command again" in msg


def test_T2_08_a_storage_being_created_or_written_by_another_worker_is_not_refused(tmp_path):
    """The check that refuses another program's SQLite file (T2-08) must not refuse a study
    file another worker is creating (some of Optuna's tables only) or writing (locked)."""
    import sqlite3

    from labkit.training.tuning import storage

    half = tmp_path / "half.db"
    with sqlite3.connect(half) as db:
        db.execute("create table studies (study_id integer)")
    storage.check_sqlite_storage(f"sqlite:///{half}")

    busy = tmp_path / "busy.db"
    optuna.create_study(storage=f"sqlite:///{busy}", study_name="s")
    writer = sqlite3.connect(busy, isolation_level=None)
    try:
        writer.execute("begin exclusive")  # a worker in the middle of a write
        storage.check_sqlite_storage(f"sqlite:///{busy}")
    finally:
        writer.execute("rollback")
        writer.close()
