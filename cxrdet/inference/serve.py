"""cxrdet serve: an AI node a PACS routes studies to (DICOM networking, pynetdicom).

    cxrdet serve CKPT --to ORTHANC@pacs:4242 [--port 11112 --host 0.0.0.0 --ae-title CXRDET]
    cxrdet serve CKPT --stow http://pacs:8042/dicom-web      (results back over DICOMweb)

A C-STORE SCP (and C-ECHO) that takes in CR and DX images, predicts them in batches (on the GPU
when there is one), and sends each image's results (a TID 1500 SR and a GSPS, as ``predict.py
results.dicom=[sr,gsps]`` writes them) to the destination by C-STORE, or by STOW-RS.

The queue survives a restart: a received image is written whole and fsynced into
``QUEUE/incoming/`` before its C-STORE is acknowledged; a batch moves to ``QUEUE/batch/`` while
it is predicted, its results wait in ``QUEUE/outbox/`` until the destination has them, and only
then are its sources removed. A process that dies anywhere finds its work there at the next
start. An object that is not a CR/DX image (an SR, a presentation state, a CT) is logged and not
queued; an image that cannot be read or referenced is logged and moved to ``QUEUE/failed/``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

log = logging.getLogger("cxrdet.serve")
logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # a dozen lines per association

MODALITIES = ("CR", "DX")


def destination(text: str) -> tuple[str, str, int]:
    """``AE@host:port`` → (AE title, host, port)."""
    try:
        ae, address = text.split("@", 1)
        host, port = address.rsplit(":", 1)
        return ae, host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected AE@host:port") from None


class Node:
    """The queue, the models and the two threads: the SCP's and the predicting one."""

    def __init__(self, args):
        from cxrdet import __version__
        from cxrdet.inference.detectors import load_models, pick_device
        from cxrdet.inference.dicom_results import Algorithm
        from cxrdet.models.weights import checkpoint_sha256

        self.args = args
        self.queue = Path(args.queue)
        for name in ("incoming", "batch", "outbox", "failed"):
            (self.queue / name).mkdir(parents=True, exist_ok=True)
        self.device = pick_device(args.device)
        self.models, self.size = load_models([args.checkpoint], self.device, None, None, args.trust)
        self.names = self.models[0].classes.names
        self.algorithm = Algorithm(
            __version__, checkpoint_sha256([args.checkpoint]), args.threshold
        )
        self.arrived = threading.Event()
        self.stopping = threading.Event()
        self.skipped = 0

    # --- receiving -----------------------------------------------------------------------
    def on_store(self, event) -> int:
        """C-STORE: a CR/DX image is queued (fsynced) before the success status goes back."""
        from cxrdet.atomic import atomic_write

        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            sop = str(ds.SOPInstanceUID)
            modality = ds.get("Modality", "?")
            if modality not in MODALITIES or "PixelData" not in ds:
                self.skipped += 1
                log.warning("not queued: %s is a %s object, not a CR/DX image (%d so far)",
                            sop, modality, self.skipped)  # fmt: skip
                return 0x0000
            path = self.queue / "incoming" / f"{sop}.dcm"
            atomic_write(path, lambda f: ds.save_as(f, enforce_file_format=True))
        except Exception as e:  # noqa: BLE001 (a bad object is refused, the node goes on)
            log.warning("refused an object from %s: %s", event.assoc.requestor.ae_title, e)
            return 0xC000  # Cannot understand
        self.arrived.set()
        return 0x0000

    def serve(self):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.args.ae_title)
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_C_ECHO, lambda event: 0x0000)]
        address = (self.args.host, self.args.port)
        server = ae.start_server(address, block=False, evt_handlers=handlers)
        log.info("cxrdet serve: %s listening on %s:%d, queue %s, results to %s",
                 self.args.ae_title, *address, self.queue, self.target())  # fmt: skip
        return server

    # --- predicting ------------------------------------------------------------------------
    def target(self) -> str:
        return self.args.stow or "{}@{}:{}".format(*self.args.to)

    def run(self) -> None:
        """Predict and send until stopped, starting with what a previous process left."""
        while not self.stopping.is_set():
            if self.take_batch():
                self.predict()
            else:
                self.arrived.wait(timeout=self.args.poll_s)
                self.arrived.clear()
            self.send_outbox()  # this batch's results, and any a destination refused before

    def take_batch(self) -> list[Path]:
        """The batch to predict: what an interrupted run left in batch/, else up to
        ``batch_size`` of the oldest received images, moved there."""
        left = sorted((self.queue / "batch").glob("*.dcm"))
        if left:
            return left
        incoming = sorted((self.queue / "incoming").glob("*.dcm"), key=os.path.getmtime)
        moved = []
        for path in incoming[: self.args.batch_size]:
            target = self.queue / "batch" / path.name
            os.replace(path, target)
            moved.append(target)
        return moved

    def predict(self) -> None:
        """Predict what is in ``batch/`` and put its results in the outbox (:meth:`run` sends
        them)."""
        from cxrdet.data.dataset import DicomDataset
        from cxrdet.inference.dicom_results import write_all
        from cxrdet.inference.prediction_pass import PassOptions, predict_dataset

        dataset = DicomDataset(self.queue / "batch", self.size)
        options = PassOptions(batch_size=self.args.batch_size, progress=False)
        results, errors, _ = predict_dataset(self.models, dataset, self.device, options)
        out = write_all(dataset, results, errors, self.names, self.args.kinds,
                        self.queue / "outbox", self.algorithm, progress=False)  # fmt: skip
        for image_id, why in out["skipped"].items():
            source = self.queue / "batch" / f"{image_id}.dcm"
            os.replace(source, self.queue / "failed" / source.name)
            (self.queue / "failed" / f"{image_id}.txt").write_text(why + "\n")
        for path in dataset.files:
            path.unlink(missing_ok=True)  # its results are in the outbox
        log.info("predicted %d image(s): %d result file(s) to send", len(dataset.files),
                 len(out["files"]))  # fmt: skip

    # --- sending ---------------------------------------------------------------------------
    def send_outbox(self) -> None:
        """Send every result waiting in the outbox; what the destination took is removed,
        the rest is tried again later."""
        paths = sorted((self.queue / "outbox").glob("*.dcm"))
        if not paths:
            return
        failed = self.stow(paths) if self.args.stow else self.c_store(paths)
        for path in paths:
            if str(path) not in failed:
                path.unlink()
        if failed:
            log.warning("%d result(s) not delivered to %s, kept in %s for the next try",
                        len(failed), self.target(), self.queue / "outbox")  # fmt: skip
            self.stopping.wait(self.args.poll_s)  # do not hammer a destination that is down

    def c_store(self, paths: list[Path]) -> dict:
        import pydicom
        from pynetdicom import AE
        from pynetdicom.sop_class import (
            Comprehensive3DSRStorage,
            GrayscaleSoftcopyPresentationStateStorage,
        )

        title, host, port = self.args.to
        ae = AE(ae_title=self.args.ae_title)
        for sop_class in (Comprehensive3DSRStorage, GrayscaleSoftcopyPresentationStateStorage):
            ae.add_requested_context(sop_class)
        assoc = ae.associate(host, port, ae_title=title)
        if not assoc.is_established:
            return {str(p): f"no association with {self.target()}" for p in paths}
        failed = {}
        try:
            for path in paths:
                status = assoc.send_c_store(pydicom.dcmread(path))
                if not status or status.Status != 0x0000:
                    failed[str(path)] = f"status {getattr(status, 'Status', 'none')}"
        finally:
            assoc.release()
        return failed

    def stow(self, paths: list[Path]) -> dict:
        from cxrdet.inference.config import DicomwebConfig
        from cxrdet.inference.dicomweb import store

        return store(DicomwebConfig(url=self.args.stow), paths, progress=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cxrdet serve", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a train.py detector checkpoint")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", type=destination, help="send results by C-STORE to AE@host:port")
    where.add_argument("--stow", help="or store them with STOW-RS at this DICOMweb root")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for a PACS elsewhere)",
    )
    p.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112)")
    p.add_argument("--ae-title", default="CXRDET", help="this node's AE title (default CXRDET)")
    p.add_argument(
        "--queue", default="outputs/serve", help="the queue's folder (survives restarts)"
    )
    p.add_argument("--threshold", type=float, default=0.3, help="findings shown (default 0.3)")
    p.add_argument("--kinds", default="sr,gsps", help="results to send: sr,gsps (default both)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda:N")
    p.add_argument("--poll-s", type=float, default=2.0, help="idle wait, and retry delay")
    p.add_argument("--trust", action="store_true", help="load a checkpoint that needs unpickling")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from cxrdet.inference.dicom_results import check_kinds

    try:
        args.kinds = check_kinds(args.kinds.split(","))
        if not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"{args.checkpoint}: not found")
        node = Node(args)
        server = node.serve()
    except (OSError, ValueError) as e:
        print(f"error: {e}", flush=True)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: node.stopping.set() or node.arrived.set())
    try:
        node.run()
    finally:
        server.shutdown()
        log.info("stopped; the queue in %s is kept for the next start", node.queue)
    return 0
