"""The results store: atomic JSON records, tolerant readers, the combined table, concurrent writers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from carlib.records.record import RECORD_SCHEMA, new_run_id
from carlib.records.store import ResultsStore, load_results

# A config as a run records it; built by hand so these tests never import TensorFlow.
BASE_CONFIG = {
    "study": "lr_study", "data_dir": "/data", "backbone": "simple_cnn", "weights": None, "image_size": 64,
    "batch_size": 32, "epochs": 10, "lr": 0.001, "schedule": "constant", "lr_boundaries": [], "lr_factor": 0.1,
    "warmup_epochs": 0, "lr_patience": 2, "optimizer": "adam", "augmentation": "light", "dropout": 0.2,
    "bn_mode": "auto", "val_split": 0.2, "seed": 0, "results_dir": "/results",
}


def make_record(study="lr_study", *, run_id=None, started_at="2024-01-01T00:00:00+00:00", metrics=None,
                history_len=3, **config):
    run_id = run_id or new_run_id(study)
    return {
        "schema": RECORD_SCHEMA,
        "run_id": run_id,
        "study": study,
        "status": "ok",
        "started_at": started_at,
        "config": {**BASE_CONFIG, "study": study, **config},
        "metrics": metrics if metrics is not None else {"val_accuracy_best": 0.5, "val_accuracy_last": 0.4,
                                                        "best_epoch": 3},
        "data": {"n_train": 80, "n_val": 20, "num_classes": 10, "n_skipped": 0, "root": "/data"},
        "timings": {"total_s": 12.5, "fit_s": 10.0, "epoch_s": 1.0, "data_s": 0.1},
        "history": [{"epoch": i + 1, "loss": 1.0 / (i + 1), "accuracy": i / 10} for i in range(history_len)],
        "run_dir": f"/results/runs/{run_id}",
    }


# ----------------------------------------------------------------- round trip
def test_write_read_round_trip(results_dir):
    store = ResultsStore(results_dir)
    record = make_record()
    path = store.write(record)
    assert path == results_dir / "records" / f"{record['run_id']}.json"
    assert json.loads(path.read_text()) == record
    assert store.records() == [record]


def test_write_converts_numpy_and_paths(results_dir):
    np = pytest.importorskip("numpy")
    record = make_record(metrics={"val_accuracy_best": np.float32(0.75), "best_epoch": np.int64(4),
                                  "confusion": np.eye(2, dtype=np.int32)})
    record["run_dir"] = results_dir / "runs" / record["run_id"]
    ResultsStore(results_dir).write(record)
    (read,) = ResultsStore(results_dir).records()
    assert read["metrics"] == {"val_accuracy_best": 0.75, "best_epoch": 4, "confusion": [[1, 0], [0, 1]]}
    assert read["run_dir"] == str(results_dir / "runs" / record["run_id"])


def test_write_refuses_unserialisable_values_and_leaves_nothing(results_dir):
    store = ResultsStore(results_dir)
    record = make_record()
    record["metrics"]["bad"] = object()
    with pytest.raises(TypeError, match="cannot store object"):
        store.write(record)
    assert list(store.records_dir.iterdir()) == []


def test_run_dir_is_created(results_dir):
    path = ResultsStore(results_dir).run_dir("abc")
    assert path == results_dir / "runs" / "abc" and path.is_dir()


def test_empty_or_missing_store(results_dir):
    assert ResultsStore(results_dir).records() == []
    frame = load_results(results_dir)
    assert frame.empty
    assert {"run_id", "lr", "val_accuracy_best"} <= set(frame.columns)


def test_default_store_is_carlib_results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CARLIB_RESULTS_DIR", str(tmp_path / "env-store"))
    ResultsStore().write(make_record())
    assert len(list((tmp_path / "env-store" / "records").glob("*.json"))) == 1
    assert len(load_results()) == 1


def test_load_results_table(results_dir):
    store = ResultsStore(results_dir)
    for i, (lr, schedule) in enumerate([(0.001, "constant"), (0.01, "step"), (0.001, "cosine")]):
        store.write(make_record(lr=lr, schedule=schedule, seed=i, lr_boundaries=[3, 6],
                                started_at=f"2024-01-0{i + 1}T00:00:00+00:00",
                                metrics={"val_accuracy_best": 0.5 + i / 10, "val_accuracy_last": 0.4}))
    frame = load_results(results_dir)
    assert len(frame) == 3
    assert {"run_id", "study", "status", "lr", "backbone", "schedule", "seed", "val_accuracy_best",
            "val_accuracy_last", "n_train", "total_s", "run_dir"} <= set(frame.columns)
    assert frame["lr"].dtype == float
    assert frame["lr"].tolist() == [0.001, 0.01, 0.001]  # oldest first
    assert frame["val_accuracy_best"].tolist() == pytest.approx([0.5, 0.6, 0.7])
    assert frame["lr_boundaries"].tolist() == ["3,6"] * 3  # lists become one cell
    assert list(frame.columns[:4]) == ["run_id", "study", "status", "started_at"]
    assert "history" not in frame.columns and "data_s" not in frame.columns
    assert frame["seed"].tolist() == [0, 1, 2]


def test_study_filter(results_dir):
    store = ResultsStore(results_dir)
    for study, n in (("lr_study", 2), ("other", 3)):
        for _ in range(n):
            store.write(make_record(study))
    assert len(store.records()) == 5
    assert len(store.records("lr_study")) == 2
    assert {r["study"] for r in store.records("other")} == {"other"}
    assert len(load_results(results_dir, study="other")) == 3
    assert set(load_results(results_dir, study="other")["study"]) == {"other"}
    assert load_results(results_dir, study="missing").empty


def test_records_are_sorted_by_start_time(results_dir):
    store = ResultsStore(results_dir)
    late = make_record(run_id="a-late", started_at="2024-05-01T00:00:00+00:00")
    early = make_record(run_id="z-early", started_at="2024-01-01T00:00:00+00:00")
    undated = make_record(run_id="m-undated", started_at=None)
    for record in (late, early, undated):
        store.write(record)
    assert [r["run_id"] for r in store.records()] == ["m-undated", "z-early", "a-late"]


def test_rewriting_a_run_id_replaces_the_record(results_dir):
    store = ResultsStore(results_dir)
    record = make_record()
    store.write({**record, "status": "running"})
    store.write(record)
    assert [r["status"] for r in store.records()] == ["ok"]


# ------------------------------------------------------------------- atomicity
def test_no_temporary_file_left_after_write(results_dir):
    store = ResultsStore(results_dir)
    for _ in range(3):
        store.write(make_record())
    names = [p.name for p in store.records_dir.iterdir()]
    assert len(names) == 3
    assert all(n.endswith(".json") and not n.startswith(".") for n in names)


def test_leftovers_and_junk_are_skipped_with_warnings(results_dir):
    store = ResultsStore(results_dir)
    good = make_record()
    store.write(good)
    records = store.records_dir
    (records / ".x.123.tmp").write_text('{"run_id": "x", "config": {')  # a killed writer's temp file
    (records / "corrupt.json").write_text('{"run_id": "corrupt", "config": {"lr": 0.0')  # truncated
    (records / "notes.txt").write_text("remember to try cosine")
    (records / "list.json").write_text("[1, 2, 3]")
    (records / "other.json").write_text('{"hello": "world"}')
    (records / "badconfig.json").write_text('{"run_id": "b", "config": 3}')
    (records / "binary.json").write_bytes(b"\xff\xfe\x00garbage")

    with pytest.warns(UserWarning) as caught:
        found = store.records()
    assert [r["run_id"] for r in found] == [good["run_id"]]
    messages = " ".join(str(w.message) for w in caught)
    for name in (".x.123.tmp", "corrupt.json", "notes.txt", "list.json", "other.json", "badconfig.json",
                 "binary.json"):
        assert name in messages, name
    assert len(caught) == 7  # one warning per skipped file
    assert good["run_id"] not in messages

    with pytest.warns(UserWarning):
        frame = load_results(results_dir)
    assert frame["run_id"].tolist() == [good["run_id"]]


def test_hidden_non_temporary_files_are_ignored_silently(results_dir):
    store = ResultsStore(results_dir)
    store.write(make_record())
    (store.records_dir / ".DS_Store").write_bytes(b"\x00\x01")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(store.records()) == 1


# ----------------------------------------------------------------------- run ids
def test_new_run_id_unique_and_time_sortable():
    ids = [new_run_id("lr_study") for _ in range(1000)]
    assert len(set(ids)) == 1000
    stamps = [i.split("-", 1)[0] for i in ids]
    assert stamps == sorted(stamps)  # the time prefix never goes backwards
    assert all(re.fullmatch(r"\d{8}T\d{6}-lr_study-[0-9a-f]{8}", i) for i in ids)
    time.sleep(1.1)
    later = new_run_id("lr_study")
    assert later > max(ids)


def test_new_run_id_is_a_safe_file_name():
    run_id = new_run_id("my study/../x" + "y" * 100)
    assert "/" not in run_id and " " not in run_id and ".." not in run_id
    assert len(run_id) < 80


# ------------------------------------------------------------ concurrent writers
WRITER = textwrap.dedent(
    """
    import sys
    from carlib.records.store import ResultsStore; from carlib.records.record import new_run_id

    root, n, history_len, worker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    store = ResultsStore(root)
    history = [{"epoch": i, "loss": 1.0 / (i + 1), "accuracy": i / history_len, "val_loss": 0.5,
                "val_accuracy": 0.25, "lr": 0.001, "epoch_time_s": 1.5} for i in range(history_len)]
    print("ready", flush=True)
    for i in range(n):
        run_id = new_run_id("concurrent")
        store.write({"run_id": run_id, "study": "concurrent", "status": "ok", "started_at": "2024",
                     "config": {"lr": 0.001, "seed": i}, "metrics": {"val_accuracy_best": 0.5},
                     "worker": worker, "index": i, "history": history})
        print(run_id, flush=True)
    """
)


def _spawn_writer(root: Path, n: int, history_len: int, worker: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(n), str(history_len), worker],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _parse_all(records_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(records_dir.glob("*.json"))]


def test_concurrent_writers_never_lose_or_mangle_records(results_dir):
    n_workers, per_worker, history_len = 4, 25, 200
    procs = [_spawn_writer(results_dir, per_worker, history_len, f"w{k}") for k in range(n_workers)]
    store = ResultsStore(results_dir)
    # Read while they write: a reader only ever sees complete records (temp files are skipped).
    while any(p.poll() is None for p in procs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for record in store.records():
                assert len(record["history"]) == history_len
        assert all("temporary file" in str(w.message) for w in caught), [str(w.message) for w in caught]
        time.sleep(0.01)
    outputs = [p.communicate(timeout=60) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    reported = [line for out, _ in outputs for line in out.split() if line != "ready"]
    assert len(reported) == len(set(reported)) == n_workers * per_worker

    files = sorted(store.records_dir.iterdir())
    assert len(files) == n_workers * per_worker
    assert all(f.suffix == ".json" and not f.name.startswith(".") for f in files)  # no temp files left
    parsed = _parse_all(store.records_dir)
    assert {r["run_id"] for r in parsed} == set(reported)
    assert all(len(r["history"]) == history_len and r["history"][-1]["epoch"] == history_len - 1 for r in parsed)
    for k in range(n_workers):
        assert sorted(r["index"] for r in parsed if r["worker"] == f"w{k}") == list(range(per_worker))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_results(results_dir, study="concurrent")) == n_workers * per_worker


def test_killed_writer_leaves_only_complete_records(results_dir):
    proc = _spawn_writer(results_dir, 100_000, 3000, "victim")
    try:
        assert proc.stdout.readline().strip() == "ready"
        seen = [proc.stdout.readline().strip() for _ in range(5)]
        assert all(seen), proc.stderr.read() if proc.poll() is not None else seen
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    reported = seen + rest.split()

    store = ResultsStore(results_dir)
    parsed = _parse_all(store.records_dir)  # every record file parses: no partial record
    on_disk = {r["run_id"] for r in parsed}
    assert set(reported) <= on_disk
    # At most the one record renamed into place between its write and its print is unreported.
    assert len(reported) <= len(on_disk) <= len(reported) + 1
    assert all(len(r["history"]) == 3000 for r in parsed)
    leftovers = [p for p in store.records_dir.iterdir() if p.suffix != ".json"]
    assert all(p.name.startswith(".") and p.suffix == ".tmp" for p in leftovers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert {r["run_id"] for r in store.records()} == on_disk
    assert len(caught) == len(leftovers)
    assert all("temporary file" in str(w.message) for w in caught)
