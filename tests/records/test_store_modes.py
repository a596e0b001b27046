"""File modes of a results store: every file carlib writes gets ``0666 & ~umask``, every folder ``0777 & ~umask``,
as ``open()`` and ``mkdir`` give them, so a group-shared store (umask 0002) works for a second user of the group,
and nothing is ever world-writable. Each case runs in a child process with its own umask (the umask is global to a
process)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from carlib.base.locks import trial_lock
from carlib.records.record import new_record, new_run_id, utc_now
from carlib.records.store import ResultsStore

ROOT = Path(__file__).resolve().parents[2]

# Every writer of the store that needs no TensorFlow: records (atomic), run folders, copies, a writer that replaces
# the temporary file it was given, the sweep's claim lock and the trial lock, the report.
_WRITE_WITHOUT_TRAINING = """
import os, sys
from pathlib import Path
from carlib.base.files import atomic_copy, atomic_path, atomic_write_text
from carlib.base.locks import exclusive_lock, trial_lock, try_lock
from carlib.records.record import new_record, new_run_id, utc_now
from carlib.records.store import ResultsStore
from carlib.studies.report import build_report

store = ResultsStore(sys.argv[1])
run_id = new_run_id("lr_study")
run_dir = store.run_dir(run_id)
store.write(new_record(run_id=run_id, study="lr_study", config={"lr": 0.001, "seed": 0}, started_at=utc_now(),
                       status="ok", metrics={}, run_dir=str(run_dir), finished_at=utc_now()))
atomic_write_text(run_dir / "history.csv", "epoch,loss\\n0,1.0\\n")
atomic_copy(run_dir / "history.csv", store.root / "backups" / "t1" / "history.csv")
with atomic_path(run_dir / "best.keras", suffix=".keras") as temporary:
    temporary.unlink()  # as a writer that deletes and re-creates its file
    temporary.write_bytes(b"model")
with try_lock(store.root / "claims" / "t1.lock"), exclusive_lock(store.root / "index.lock"):
    with trial_lock(store.root, "t1"):
        pass
build_report(store.root, store.root / "report.html")
"""


def _run(code: str, *args: str, umask: int, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code, *args], umask=umask, env=env, capture_output=True,
                            text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of every file and folder under ``root`` (root included), by relative path."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[path.relative_to(root).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _assert_modes(root: Path, umask: int) -> dict[str, int]:
    modes = _modes(root)
    for name, mode in modes.items():
        expected = (0o777 if (root / name).is_dir() else 0o666) & ~umask
        assert mode == expected, f"{name}: {oct(mode)}, expected {oct(expected)} under umask {umask:04o}"
        assert not mode & stat.S_IWOTH, f"{name} is world-writable ({oct(mode)})"
    return modes


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_file_of_the_store_gets_the_mode_open_would_give_it(tmp_path, umask):
    store = tmp_path / "results"
    _run(_WRITE_WITHOUT_TRAINING, str(store), umask=umask)
    modes = _assert_modes(store, umask)
    assert {"records", "runs", "claims", "backups", "report.html", "index.lock"} <= set(modes)
    assert len([n for n in modes if n.startswith("records/")]) == 1 and not any("/." in n for n in modes)


@pytest.fixture(scope="module")
def group_store(tiny_data_dir):
    """A store under umask 0002 after a real tiny sweep trial (checkpoints, backup, lock, curves) and the report.

    It lives in a fresh folder of /tmp that other users can enter (pytest's own is private to its user).
    """
    base = Path(tempfile.mkdtemp(prefix="carlib-group-store-"))
    os.chmod(base, 0o755)
    store = base / "results"
    code = textwrap.dedent("""
        import sys
        import carlib
        from carlib.studies.report import build_report
        carlib.run_experiment(data_dir=sys.argv[2], backbone="simple_cnn", image_size=16, batch_size=16, epochs=2,
                              augmentation="none", val_split=0.25, results_dir=sys.argv[1], trial_id="t-modes",
                              study="lr_study")
        build_report(sys.argv[1], sys.argv[1] + "/report.html")
    """)
    _run(code, str(store), str(tiny_data_dir), umask=0o002)
    yield store
    shutil.rmtree(base, ignore_errors=True)


def test_a_real_run_in_a_group_shared_store_leaves_every_file_group_writable(group_store):
    modes = _assert_modes(group_store, 0o002)
    (run_dir,) = (group_store / "runs").iterdir()
    for name in ("best.keras", "last.keras", "history.csv", "learning_curves.png"):
        assert modes[f"runs/{run_dir.name}/{name}"] == 0o664, name
    assert modes["backups/t-modes.lock"] == 0o664 and modes["report.html"] == 0o664


def _as_teammate(uid: int, group: int, work) -> int:
    """Run ``work()`` in a forked child as user ``uid`` (its own group, plus ``group``) under umask 0002; its exit
    status (0: ``work`` returned). A fork, not a subprocess: this interpreter lives where other users cannot read."""
    pid = os.fork()
    if pid == 0:  # the child: become the teammate, work, leave without running the parent's cleanup
        status = 1
        try:
            os.setgroups([group])
            os.setgid(uid)
            os.setuid(uid)
            os.umask(0o002)
            work()
            status = 0
        except BaseException as err:  # reported to the parent through the exit status and stderr
            print(f"teammate failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        finally:
            os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0, reason="switching users needs root")
def test_a_second_member_of_the_group_reads_every_file_and_adds_records(group_store):
    group, teammate = 54321, 54322  # ids no one on the machine uses: the store's group, and a second user in it
    for path in [group_store, *group_store.rglob("*")]:  # the recipe of docs/sweeps.md: the group's, setgid folders
        os.chown(path, -1, group, follow_symlinks=False)
        if path.is_dir():
            os.chmod(path, stat.S_IMODE(path.stat().st_mode) | stat.S_ISGID)
    store = ResultsStore(group_store)
    (first,) = store.records()

    def work():
        for path in sorted(group_store.rglob("*")):
            if path.is_file():
                path.read_bytes()
        with trial_lock(store.root, "t-modes"):  # the first user's lock file, opened for writing
            run_id = new_run_id("lr_study")
            store.run_dir(run_id)
            store.write(new_record(run_id=run_id, study="lr_study", config=first["config"], started_at=utc_now(),
                                   status="ok", metrics={}, finished_at=utc_now()))
        store.write({**first, "note": "rewritten by a teammate"})  # replacing the first user's record

    assert _as_teammate(teammate, group, work) == 0
    records = store.records()
    assert len(records) == 2 and {r["run_id"] for r in records} > {first["run_id"]}
    written = [p for p in (group_store / "records").iterdir() if p.stat().st_uid == teammate]
    assert len(written) == 2 and all(stat.S_IMODE(p.stat().st_mode) == 0o664 for p in written)
    assert all(p.stat().st_gid == group for p in written)  # the setgid folder gave them the store's group
    assert json.loads((group_store / "records" / f"{first['run_id']}.json").read_text())["note"] == \
        "rewritten by a teammate"
