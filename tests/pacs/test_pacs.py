"""Results where hospitals look: DICOM SR (TID 1500) and GSPS from predict.py, in and out of a
real PACS (Orthanc) over DICOMweb."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import cannot_run, free_port, in_process, tiny_overrides, train_in_process
from pacs_server import PASSWORD, USER, start_orthanc

from cxrdet.evaluation.submission import read_submission


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def checkpoint(tiny_data, module_tmp) -> str:
    run = module_tmp / "run"
    train_in_process([*tiny_overrides(tiny_data, run), "trainer.max_steps=1"])
    return str(run / "checkpoints" / "last.ckpt")


def dciodvfy_errors(path: Path) -> list[str]:
    """dicom3tools' validator's error lines for a file (warnings are not errors)."""
    if not shutil.which("dciodvfy"):
        cannot_run("needs dciodvfy (apt-get install dicom3tools)")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def boxes_of(prediction) -> list[tuple[int, float, list[float]]]:
    boxes, scores, classes = prediction
    return sorted(
        (int(c), round(float(s), 4), [float(v) for v in b])
        for b, s, c in zip(boxes, scores, classes)
        if c != 14
    )


def test_predict_from_orthanc_stores_sr_and_gsps_back_with_the_submission_s_boxes(
    tiny_data, checkpoint, orthanc, tmp_path, monkeypatch
):
    """Phantom studies stored in Orthanc -> predict.py source=dicomweb (WADO-RS, the password
    from the environment) -> one SR and one GSPS per image stored back (STOW-RS) -> found by
    QIDO-RS in each study -> read back with highdicom: the boxes, classes and scores of the
    submission's rows, to 0.5 px; dciodvfy finds no error in either object. Fails without the
    results (nothing found by QIDO) or with boxes in the model's 64-px grid."""
    from dicomweb_client.api import DICOMwebClient

    from cxrdet.data.classes import KAGGLE14
    from cxrdet.inference.config import DicomwebConfig
    from cxrdet.inference.dicom_results import read_back
    from cxrdet.inference.dicomweb import session

    sources = sorted((tiny_data["raw"] / "test").glob("*.dicom"))
    studies = [pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in sources]
    for path in sources:
        orthanc.store(path)
    monkeypatch.setenv("CXRDET_DICOMWEB_USER", USER)
    monkeypatch.setenv("CXRDET_DICOMWEB_PASSWORD", PASSWORD)
    out = tmp_path / "predict"
    log = in_process(
        "predict.py",
        [
            f"ckpt_path={checkpoint}",
            "source=dicomweb",
            f"dicomweb.url={orthanc.dicomweb}",
            f"dicomweb.study=[{','.join(studies)}]",
            "results.dicom=[sr,gsps]",
            "results.stow=true",
            "results.threshold=0",  # every box the submission has (a 1-step model's are weak)
            "max_detections=3",
            "device=cpu",
            "num_workers=0",
            "progress=false",
            f"hydra.run.dir={out}",
        ],
    )
    assert PASSWORD not in log
    rows = read_submission(out / "submission.csv")
    assert len(rows) == len(sources)  # image ids: the SOP instance UIDs

    web = DICOMwebClient(orthanc.dicomweb, session=session(DicomwebConfig(retries=0)))
    found = 0
    for study in studies:
        for modality, suffix in (("SR", "sr"), ("PR", "gsps")):
            hits = web.search_for_instances(study, search_filters={"Modality": modality})
            assert len(hits) == 1, (study, modality)
            series, sop = hits[0]["0020000E"]["Value"][0], hits[0]["00080018"]["Value"][0]
            path = tmp_path / f"{sop}.{suffix}.dcm"
            web.retrieve_instance(study, series, sop).save_as(path, enforce_file_format=True)
            assert dciodvfy_errors(path) == []
            if modality == "PR":
                continue
            sr = pydicom.dcmread(path)
            image_id = (
                sr.CurrentRequestedProcedureEvidenceSequence[0]
                .ReferencedSeriesSequence[0]
                .ReferencedSOPSequence[0]
                .ReferencedSOPInstanceUID
            )
            read = sorted(
                (KAGGLE14.names.index(name), round(score, 4), box.tolist())
                for name, score, box in read_back(path)
            )
            expected = boxes_of(rows[image_id])
            assert [(c, s) for c, s, _ in read] == [(c, s) for c, s, _ in expected]
            assert len(read) == 3
            np.testing.assert_allclose([b for *_, b in read], [b for *_, b in expected], atol=0.5)
            found += 1
    assert found == len(sources)


def test_every_finding_of_both_class_sets_has_one_code_of_its_own():
    """kaggle14's and local22's names each get a code (SNOMED CT where DICOM's tables have
    the concept, else 99CXRDET), no two names the same code."""
    from cxrdet.data.classes import KAGGLE14, LOCAL22
    from cxrdet.inference.finding_codes import finding_code

    names = sorted(set(KAGGLE14.findings + LOCAL22.findings))
    found = {(c.value, c.scheme_designator) for c in map(finding_code, names)}
    assert len(found) == len(names) == 22
    assert finding_code("Cardiomegaly").scheme_designator == "SCT"
    with pytest.raises(ValueError, match="no DICOM code for the class 'Fracture'"):
        finding_code("Fracture")


def _phantom(path: Path, **drop) -> Path:
    from cxrdet.demo.synth import write_dicom

    write_dicom(path, np.random.default_rng(0).random((90, 70)), image_id=path.stem)
    if drop:
        ds = pydicom.dcmread(path)
        for key in drop:
            delattr(ds, key)
        ds.save_as(path, enforce_file_format=True)
    return path


def test_an_image_without_findings_says_so_and_a_header_without_uids_is_named_and_skipped(
    tmp_path, caplog
):
    """An image read with nothing at the threshold gets an SR whose one group says "absence
    of findings" and a GSPS with a line of text and the source's window, both dciodvfy-clean;
    a source without StudyInstanceUID cannot be referenced: named in the log and counted, the
    others written."""
    from cxrdet.inference.dicom_results import Algorithm, read_back, write_all

    class Dataset:
        ids = ["good", "nouid"]
        files = [_phantom(tmp_path / "good.dicom"),
                 _phantom(tmp_path / "nouid.dicom", StudyInstanceUID=None)]  # fmt: skip

    weak = (np.array([[5.0, 6, 30, 40]]), np.array([0.2]), np.array([3]))
    algorithm = Algorithm("0.1.0", "0" * 64, 0.3)
    names = [*(f"c{i}" for i in range(3)), "Cardiomegaly"]
    with caplog.at_level("WARNING"):
        out = write_all(Dataset, {"good": weak, "nouid": weak}, {}, names, ["sr", "gsps"],
                        tmp_path / "dicom", algorithm, progress=False)  # fmt: skip
    assert sorted(p.name for p in out["files"]) == ["good.gsps.dcm", "good.sr.dcm"]
    assert list(out["skipped"]) == ["nouid"]
    assert "nouid.dicom: no StudyInstanceUID" in caplog.text and "1 of 2 images" in caplog.text
    sr = tmp_path / "dicom" / "good.sr.dcm"
    assert read_back(sr) == []
    assert "Absence findings" in str(pydicom.dcmread(sr).ContentSequence)
    gsps, source = (
        pydicom.dcmread(tmp_path / "dicom" / "good.gsps.dcm"),
        pydicom.dcmread(Dataset.files[0]),
    )
    voi = gsps.SoftcopyVOILUTSequence[0]  # the source's window, kept
    assert (voi.WindowCenter, voi.WindowWidth) == (source.WindowCenter, source.WindowWidth)
    text = gsps.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
    assert text == "cxrdet: no finding with score >= 0.3"
    for path in out["files"]:
        assert dciodvfy_errors(path) == []


def test_results_need_dicom_input_and_stow_needs_a_dicomweb_source(tiny_data, tmp_path):
    from cxrdet.inference.config import PredictConfig, ResultsConfig
    from cxrdet.inference.predictor import predict

    prepared = tiny_data["prepared"] / "64"
    settings = PredictConfig(
        ckpt_path="never-loaded.ckpt",
        output=str(tmp_path / "submission.csv"),
        image_dir=str(prepared / "test"),
        meta_csv=str(prepared / "test_meta.csv"),
        results=ResultsConfig(dicom=["sr"]),
    )
    with pytest.raises(ValueError, match="predict from DICOMs"):
        predict(settings)
    settings.results.dicom = ["sr", "pdf"]
    with pytest.raises(ValueError, match="unknown kind 'pdf'"):
        predict(settings)
    import importlib.util

    spec = importlib.util.spec_from_file_location("predict_entry", Path("predict.py").resolve())
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    settings.results = ResultsConfig(dicom=["sr"], stow=True)
    with pytest.raises(ValueError, match="needs source=dicomweb"):
        entry.from_dicomweb(settings)


def test_fetch_names_an_instance_that_fails_and_fetches_the_others(tmp_path, monkeypatch, caplog):
    """WADO-RS failing for one instance (the server answers 500 after its retries): that SOP
    instance is named, the other is written whole, a series of another modality is not
    fetched; a second fetch does not fetch again what it has."""
    import requests

    from cxrdet.inference import dicomweb
    from cxrdet.inference.config import DicomwebConfig

    source = pydicom.dcmread(_phantom(tmp_path / "a.dicom"))
    calls = []

    class Web:
        def search_for_series(self, study_instance_uid):
            return [{"0020000E": {"Value": ["s1"]}, "00080060": {"Value": ["DX"]}},
                    {"0020000E": {"Value": ["s2"]}, "00080060": {"Value": ["SR"]}}]  # fmt: skip

        def search_for_instances(self, study_instance_uid, series_instance_uid):
            return [{"00080018": {"Value": [uid]}} for uid in ("ok", "broken")]

        def retrieve_instance(self, study, series, sop):
            calls.append(sop)
            if sop == "broken":
                response = requests.Response()
                response.status_code, response.reason = 500, "Internal Server Error"
                raise requests.HTTPError(response=response)
            return source

    monkeypatch.setattr(dicomweb, "client", lambda cfg: Web())
    cfg = DicomwebConfig(url="http://pacs.invalid/dicom-web", study="1.2.3")
    with caplog.at_level("WARNING"):
        folder, failed = dicomweb.fetch(cfg, tmp_path / "in", progress=False)
    assert failed == {"broken": "HTTP 500 Internal Server Error"}
    assert "broken not fetched: HTTP 500" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == ["ok.dcm"]
    assert pydicom.dcmread(folder / "ok.dcm").SOPInstanceUID == source.SOPInstanceUID
    dicomweb.fetch(cfg, tmp_path / "in", progress=False)
    assert calls == ["ok", "broken", "broken"]


def test_orthanc_routes_a_study_to_cxrdet_serve_and_gets_sr_and_gsps_back(
    tiny_data, checkpoint, tmp_path
):
    """Orthanc C-ECHOes and C-STOREs the phantom studies to ``cxrdet serve``, which sends each
    image's SR and GSPS back by C-STORE; an image received by a process that died before
    predicting it (left in the queue) is predicted at the next start; an SR routed to the node
    is logged and not queued; SIGTERM stops it with an empty queue. Fails when the queue is
    not read at start (4 results, not 5) or when the node predicts what it cannot."""
    import signal

    from conftest import PY, REPO

    port = free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", {"cxrdet": ["CXRDET", "127.0.0.1", port]})
    queue = tmp_path / "queue"
    (queue / "incoming").mkdir(parents=True)
    sources = sorted((tiny_data["raw"] / "test").glob("*.dicom"))
    left = _phantom(tmp_path / "left-behind.dicom")  # a study of its own, only in the queue
    shutil.copy(left, queue / "incoming" / f"{pydicom.dcmread(left).SOPInstanceUID}.dcm")
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115 (a pipe nobody reads would fill)
    node = subprocess.Popen(
        [PY, "-m", "cxrdet", "serve", checkpoint, "--to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
         "--port", str(port), "--queue", str(queue), "--threshold", "0", "--device", "cpu",
         "--poll-s", "0.2"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    def said() -> str:
        return (tmp_path / "serve.log").read_text()[-3000:]

    try:
        ids = [orthanc.store(p)["ID"] for p in sources]
        deadline = time.time() + 120
        while not orthanc.post("/modalities/cxrdet/echo", json={}).ok:
            assert node.poll() is None and time.time() < deadline, said()
            time.sleep(0.5)
        assert orthanc.post("/modalities/cxrdet/store", json=ids).ok

        def results(modality, **query):
            query = {"Modality": modality, **query}
            return orthanc.post("/tools/find", json={"Level": "Instance", "Query": query}).json()

        while len(results("SR")) < len(sources) + 1 or len(results("PR")) < len(sources) + 1:
            assert node.poll() is None and time.time() < deadline, said()
            time.sleep(0.5)
        left_study = pydicom.dcmread(left).StudyInstanceUID
        assert len(results("SR", StudyInstanceUID=left_study)) == 1  # from the queue
        assert orthanc.post("/modalities/cxrdet/store", json=results("SR")[:1]).ok
        time.sleep(1)
        counts = len(results("SR")), len(results("PR"))
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
        log.close()
        orthanc.stop()
    out = (tmp_path / "serve.log").read_text()
    assert node.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert counts == (len(sources) + 1, len(sources) + 1)  # one of each per image, no more
    assert "is a SR object, not a CR/DX image" in out
    assert out.split("predicted ")[1].startswith("1 image(s)")  # the queue's, before any routed
    assert [p for p in queue.rglob("*") if p.is_file()] == []


def test_a_server_that_does_not_answer_is_named_in_one_line(tmp_path):
    from cxrdet.inference.config import DicomwebConfig
    from cxrdet.inference.dicomweb import fetch

    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    cfg = DicomwebConfig(url=url, retries=1, timeout_s=5)
    with pytest.raises(ValueError, match=f"DICOMweb {url}: cannot search its studies: Conn"):
        fetch(cfg, tmp_path / "in", progress=False)


def test_a_request_the_server_answers_503_is_tried_again_with_the_credentials(monkeypatch, caplog):
    """A QIDO-RS search answered 503 once is sent again (dicomweb.retries), with the bearer
    token from the environment each time; the token is in no log line."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from cxrdet.inference import dicomweb
    from cxrdet.inference.config import DicomwebConfig

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.headers.get("Authorization"))
            code, body = (503, b"") if len(seen) == 1 else (200, json.dumps([]).encode())
            self.send_response(code)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CXRDET_DICOMWEB_TOKEN", "s3cret-token")
    url = f"http://127.0.0.1:{server.server_port}/dicom-web"
    cfg = DicomwebConfig(url=url, modality=["DX"], retries=2)
    try:
        with caplog.at_level("DEBUG"):
            assert dicomweb.study_uids(dicomweb.client(cfg), cfg) == []
    finally:
        server.shutdown()
    assert seen == ["Bearer s3cret-token"] * 2
    assert "s3cret" not in caplog.text
