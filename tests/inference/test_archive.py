"""Prediction at archive scale: several processes, streamed per process, resumable, the index.

The runs use a random-init detector (what it finds does not matter, only that every process
finds the same) on a nested tree of the tiny phantoms with a truncated file and a DICOM SR in
it, two images per batch and one CPU thread per process (torch's CPU kernels sum in an order
that depends on the thread count: the same bits need the same threads).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter

import pydicom
import pytest
import torch
from conftest import PY, REPO, free_port, in_process

from cxrdet.data import dicom_index
from cxrdet.inference.parts import PartWriter, done_ids, merge, whole_lines

OPTIM = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.005, "momentum": 0.9}


@pytest.fixture(scope="module")
def archive(tiny_data, module_tmp):
    """A checkpoint and a tree of 20 DICOMs in nested folders (one truncated, one SR)."""
    from cxrdet.models.module import DetectorModule

    torch.manual_seed(0)
    model = {"num_classes": 14, "image_size": 64, "weights": None, "rpn_post_nms_top_n_test": 100}
    module = DetectorModule(model=model, optim=OPTIM)
    ckpt = module_tmp / "model.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt)
    tree = module_tmp / "tree"
    sources = sorted((tiny_data["raw"] / "train").glob("*.dicom"))
    sources += sorted((tiny_data["raw"] / "test").glob("*.dicom"))
    for k, src in enumerate(sources[:19]):
        folder = tree / f"site{k % 2}" / f"day{k % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, folder / src.name)
    data = sources[19].read_bytes()
    (tree / "site0" / "truncated.dcm").write_bytes(data[: len(data) // 2])  # pixels cut off
    report = pydicom.dcmread(sources[0], stop_before_pixels=True)
    report.Modality = "SR"
    report.save_as(tree / "site1" / "report.dcm")
    return {"ckpt": ckpt, "tree": tree, "n": 20}


def args(archive, run_dir, *extra) -> list[str]:
    return [
        f"ckpt_path={archive['ckpt']}",
        f"dicom_dir={archive['tree']}",
        "batch_size=2",
        "num_workers=0",
        "progress=false",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def one_thread_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


@pytest.fixture(scope="module")
def single(archive, module_tmp):
    """The one-process run, in this process at one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        in_process("predict.py", args(archive, module_tmp / "single"))
    finally:
        torch.set_num_threads(threads)
    return module_tmp / "single"


def lines_in(path) -> int:
    return sum(1 for _ in whole_lines(path))


def lines_per_image(run_dir) -> Counter:
    folder = run_dir / "submission.parts"
    return Counter(
        json.loads(line)["id"] for p in folder.glob("rank*.jsonl") for _, line in whole_lines(p)
    )


def test_one_process_streams_every_image_once_and_names_the_failure(single, archive):
    sub = (single / "submission.csv").read_text().splitlines()
    assert len(sub) == 1 + archive["n"]  # 20 images: the SR is no image
    assert lines_per_image(single) == Counter({i: 1 for i in (r.split(",")[0] for r in sub[1:])})
    failures = (single / "failures.csv").read_text().splitlines()
    assert len(failures) == 2 and failures[1].startswith("truncated,")
    assert "truncated,14 1 0 0 1 1" in sub
    table = (single / "detections.csv").read_text().splitlines()
    assert table[0] == "image_id,class_id,class_name,score,x_min,y_min,x_max,y_max,checkpoint"
    assert len(table) > 100  # random init: many weak boxes
    summary = json.loads((single / "predict.json").read_text())
    assert summary["not_images"] == 1 and summary["unreadable"] == 1
    assert summary["predicted"] == archive["n"]


def test_two_launched_processes_write_the_one_process_files_byte_for_byte(
    single, archive, tmp_path
):
    """Two tasks started as srun or torchrun starts them (the environment names each one's
    rank), each with a run folder of its own, as their own clocks would name them: the first
    one's folder gets the outputs, the same bytes as one process's. (``trainer.devices=2``
    starting its own second process is the next test's.)"""
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {**one_thread_env(), "LOCAL_RANK": str(rank), "NODE_RANK": "0", "WORLD_SIZE": "2"}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        command = [PY, "predict.py", *args(archive, tmp_path / f"task{rank}", "trainer.devices=2")]
        procs.append(
            subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    run = tmp_path / "task0"
    for name in ("submission.csv", "detections.csv", "failures.csv"):
        assert (run / name).read_bytes() == (single / name).read_bytes(), name
    assert not (tmp_path / "task1" / "submission.parts").exists()
    per_rank = {
        p.name: {json.loads(line)["id"] for _, line in whole_lines(p)}
        for p in (run / "submission.parts").glob("rank*.jsonl")
    }
    assert sorted(per_rank) == ["rank0of2.jsonl", "rank1of2.jsonl"]
    assert len(per_rank["rank0of2.jsonl"]) == len(per_rank["rank1of2.jsonl"]) == 10
    assert lines_per_image(run) == lines_per_image(single)  # each image predicted once


def test_a_killed_run_continues_where_it_stopped_and_refuses_other_settings(
    single, archive, tmp_path
):
    run = tmp_path / "killed"
    command = [PY, "predict.py", *args(archive, run, "trainer.devices=2")]
    proc = subprocess.Popen(
        command, cwd=REPO, env=one_thread_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    parts = run / "submission.parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        files = list(parts.glob("rank*of2.jsonl")) if parts.is_dir() else []
        if len(files) == 2 and min(map(lines_in, files)) >= 2:
            break  # a batch (two images) written by each process: the one it started too
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job step, as a node failure or scancel -9
    proc.wait()
    assert not (run / "submission.csv").exists()
    # and a kill in the middle of a batch's write: its second line never made it
    fullest = max(parts.glob("rank*.jsonl"), key=lines_in)
    *keep, _ = whole_lines(fullest)
    os.truncate(fullest, sum(len(line) for _, line in keep))
    written = sum(lines_per_image(run).values())
    assert 0 < written < archive["n"] - 1, written
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # relaunched with one process: the other shares are taken over
        log = in_process("predict.py", args(archive, run))
    finally:
        torch.set_num_threads(threads)
    assert f"{written} images predicted before" in log
    assert (run / "submission.csv").read_bytes() == (single / "submission.csv").read_bytes()
    assert set(lines_per_image(run).values()) == {1}  # none repeated (the half batch's first
    # image not written again), none missing
    assert sum(lines_per_image(run).values()) == archive["n"]
    with pytest.raises(SystemExit, match=r"other settings \(tta: none -> hflip\)"):
        in_process("predict.py", args(archive, run, "tta=hflip"))


def test_a_partial_line_is_dropped_and_a_missing_image_is_named(tmp_path, caplog):
    folder = tmp_path / "submission.parts"
    writer = PartWriter(folder, 0, 1)
    writer.write([{"id": "a", "row": "14 1 0 0 1 1", "det": []}])
    writer.close()
    with open(folder / "rank0of1.jsonl", "ab") as f:
        f.write(b'{"id":"b","row":"14 1 0')  # a kill mid-write
    assert done_ids(folder) == {"a"}
    writer = PartWriter(folder, 0, 1)  # the same process again: the half line goes
    writer.write([{"id": "b", "row": "3 0.5000 1.0 2.0 3.0 4.0", "det": [[3, 0.5, 1, 2, 3, 4]]}])
    writer.close()
    assert [json.loads(line)["id"] for _, line in whole_lines(folder / "rank0of1.jsonl")] == [
        "a",
        "b",
    ]
    (folder / "rank1of2.jsonl").write_bytes(b"\0" * 30 + b"\n")  # a crashed node's zeros
    with caplog.at_level("WARNING"):
        assert done_ids(folder) == {"a", "b"}
    assert "rank1of2.jsonl, byte 0: not an image's line (skipped)" in caplog.text
    out = tmp_path / "submission.csv"
    merge(folder, ["b", "a"], out, ["c"] * 14, "abc", "p.csv", "d.csv", [])
    assert (
        out.read_text() == "image_id,PredictionString\nb,3 0.5000 1.0 2.0 3.0 4.0\na,14 1 0 0 1 1\n"
    )
    with pytest.raises(ValueError, match="1 of 3 images have no prediction .e.g. c.: a process"):
        merge(folder, ["a", "b", "c"], tmp_path / "s2.csv", ["c"] * 14, "abc", "p", "d", [])
    assert not (tmp_path / "s2.csv").exists()


def test_the_index_reads_each_header_once_and_leaves_out_what_is_no_image(
    archive, tmp_path, monkeypatch
):
    cache = tmp_path / "index.csv"
    index = dicom_index.index_dicoms(archive["tree"], cache, workers=1, progress=False)
    assert len(index.files) == archive["n"] and index.left_out == {"SR": 1}
    assert index.files == sorted(index.files) and "truncated" in index.ids
    assert [f.stem for f in index.files] == index.ids
    read = []
    real = dicom_index.read_header
    monkeypatch.setattr(dicom_index, "read_header", lambda p: read.append(p) or real(p))
    again = dicom_index.index_dicoms(archive["tree"], cache, workers=1, progress=False)
    assert read == [] and again.files == index.files  # every header known
    changed = index.files[3]
    os.utime(changed, ns=(1, 1))  # another modification time: read again
    try:
        dicom_index.index_dicoms(archive["tree"], cache, workers=1, progress=False)
    finally:
        shutil.copystat(index.files[4], changed)
    assert read == [str(changed)]
    other = dicom_index.read_index(cache, archive["tree"])  # what the other processes read
    assert other.files == index.files and other.ids == index.ids


def test_a_manifest_lists_files_with_their_ids_and_bad_ones_are_named(archive, tmp_path):
    files = sorted(archive["tree"].rglob("*.dicom"))[:3]
    manifest = tmp_path / "manifest.csv"
    rows = [f"{os.path.relpath(f, tmp_path)},study{k}" for k, f in enumerate(files)]
    manifest.write_text("path,image_id\n" + "\n".join(rows) + "\n")
    index = dicom_index.index_dicoms(manifest, tmp_path / "i.csv", progress=False)
    assert index.ids == ["study0", "study1", "study2"] and index.files == files
    manifest.write_text(f"path\n{files[0]}\n{files[1]}\n{files[0]}\n")
    with pytest.raises(ValueError, match="1 files listed twice, e.g. "):
        dicom_index.index_dicoms(manifest, tmp_path / "i.csv", progress=False)
    manifest.write_text("file\nx.dcm\n")
    with pytest.raises(ValueError, match="manifest.csv: no 'path' column"):
        dicom_index.index_dicoms(manifest, tmp_path / "i.csv", progress=False)
    twice = tmp_path / "twice"
    for sub in ("a", "b"):
        (twice / sub).mkdir(parents=True)
        shutil.copy(files[0], twice / sub / "same.dicom")
    with pytest.raises(ValueError, match="1 image ids occur twice .* give a manifest"):
        dicom_index.index_dicoms(twice, tmp_path / "t.csv", progress=False)


def test_tasks_started_by_a_launcher_must_be_declared(monkeypatch):
    from cxrdet.inference.processes import PeerStopped, Ranks, share, start_ranks

    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    with pytest.raises(ValueError, match="started as 4 tasks .* set trainer.devices"):
        start_ranks(1, 1, torch.device("cpu"))

    class Gone:  # gloo's barrier when another process has died
        def barrier(self, name):
            raise RuntimeError("[pair.cc:561] Connection closed by peer [127.0.0.1]:5506")

    with pytest.raises(PeerStopped, match="process 1 of 2: another process stopped before the"):
        Ranks(1, 2, torch.device("cpu"), Gone()).barrier("index")
    batches = [list(b) for r in range(3) for b in share(11, 2, r, 3)]
    assert sorted(i for b in batches for i in b) == list(range(11))  # each image once
    assert sorted(map(tuple, batches)) == [tuple(range(s, min(s + 2, 11))) for s in range(0, 11, 2)]
