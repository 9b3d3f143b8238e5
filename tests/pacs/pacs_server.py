"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin (``.ci/run`` installs
``orthanc``, ``orthanc-dicomweb`` and ``dicom3tools``), started on 127.0.0.1 on free ports
from ``orthanc.json`` beside this file, its storage in a temporary folder; the ``orthanc``
fixture stops it after the module that uses it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from conftest import cannot_run, free_port

HERE = Path(__file__).resolve().parent
USER, PASSWORD = "cxrdet", "test-only-password"  # orthanc.json's RegisteredUsers
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    def __init__(self, folder: Path, modalities: dict | None = None):
        self.http_port, self.dicom_port = free_port(), free_port()
        config = json.loads((HERE / "orthanc.json").read_text())
        config.update(
            HttpPort=self.http_port,
            DicomPort=self.dicom_port,
            StorageDirectory=str(folder / "storage"),
            IndexDirectory=str(folder / "index"),
            DicomModalities=modalities or {},
        )
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "w")  # noqa: SIM115 (open while it runs)
        self.process = subprocess.Popen(
            ["Orthanc", str(folder / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.wait()

    def get(self, path: str, **kw):
        import requests

        return requests.get(self.url + path, auth=(USER, PASSWORD), timeout=30, **kw)

    def post(self, path: str, **kw):
        import requests

        return requests.post(self.url + path, auth=(USER, PASSWORD), timeout=60, **kw)

    def wait(self, timeout: float = 60) -> None:
        import requests

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if self.get("/system").ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer in time")

    def store(self, path: Path) -> dict:
        answer = self.post("/instances", data=Path(path).read_bytes())
        answer.raise_for_status()
        return answer.json()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def start_orthanc(folder: Path, modalities: dict | None = None) -> Orthanc:
    if not shutil.which("Orthanc") or not PLUGIN.is_file():
        cannot_run("needs Orthanc and its DICOMweb plugin (apt-get install orthanc-dicomweb)")
    folder.mkdir(parents=True, exist_ok=True)
    return Orthanc(folder, modalities)
