"""``predict.py source=dicomweb``: studies from a PACS over DICOMweb, and the results back.

QIDO-RS finds the studies (``dicomweb.study``, or a query on modality and date) and their CR/DX
series; WADO-RS fetches each instance into ``dicomweb.download_dir`` (``<SOPInstanceUID>.dcm``,
written whole or not at all), from which prediction runs as from ``dicom_dir``. With
``results.stow=true`` the DICOM results (SR, GSPS) are stored back with STOW-RS.

Credentials come from the environment (``CXRDET_DICOMWEB_TOKEN``, or ``CXRDET_DICOMWEB_USER``
and ``CXRDET_DICOMWEB_PASSWORD``) or a token file (``dicomweb.token_file``), never from the
command line, and are never logged. Every request has a timeout and is retried, backing off, on
a failed connection or a 5xx/429 answer; an instance that still fails is named and the others
go on. Nothing is sent anywhere but to ``dicomweb.url``, and only with ``results.stow=true``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # a line per request otherwise

TOKEN_ENV = "CXRDET_DICOMWEB_TOKEN"
USER_ENV, PASSWORD_ENV = "CXRDET_DICOMWEB_USER", "CXRDET_DICOMWEB_PASSWORD"
# DICOM JSON tags of what the queries return
STUDY_UID, SERIES_UID, SOP_UID, MODALITY = "0020000D", "0020000E", "00080018", "00080060"


def session(cfg):
    """A requests session with the configured credentials and retries."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    s = requests.Session()
    retry = Retry(
        total=cfg.retries,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,  # every method, POST (STOW-RS) included
        raise_on_status=False,
    )
    s.mount("http://", HTTPAdapter(max_retries=retry))
    s.mount("https://", HTTPAdapter(max_retries=retry))
    token = None
    if cfg.token_file:
        path = Path(cfg.token_file)
        if not path.is_file():
            raise FileNotFoundError(f"dicomweb.token_file: {path} not found")
        token = path.read_text().strip()
    token = token or os.environ.get(TOKEN_ENV)
    if token:
        s.headers["Authorization"] = f"Bearer {token}"
    elif os.environ.get(USER_ENV):
        s.auth = (os.environ[USER_ENV], os.environ.get(PASSWORD_ENV, ""))
    return s


def client(cfg):
    """A dicomweb-client for ``cfg.url`` (ValueError without one)."""
    from dicomweb_client.api import DICOMwebClient

    if not cfg.url:
        raise ValueError("source=dicomweb needs dicomweb.url (the server's DICOMweb root)")
    web = DICOMwebClient(url=cfg.url.rstrip("/"), session=session(cfg), timeout=cfg.timeout_s)
    # The session retries; the client's own retrying tries 5 times on any error, a refused
    # connection included, waiting up to 16 s between tries.
    web.set_http_retry_params(retry=False)
    return web


def value(item: dict, tag: str):
    """A DICOM JSON attribute's first value (None when absent)."""
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def study_uids(web, cfg) -> list[str]:
    """The studies to predict: ``cfg.study`` as given, else what QIDO-RS finds for
    ``cfg.modality`` and ``cfg.date``."""
    if cfg.study:
        return [cfg.study] if isinstance(cfg.study, str) else [str(s) for s in cfg.study]
    found = []
    for modality in cfg.modality:
        filters = {"ModalitiesInStudy": modality, **({"StudyDate": cfg.date} if cfg.date else {})}
        for item in web.search_for_studies(search_filters=filters, limit=cfg.limit):
            uid = value(item, STUDY_UID)
            if uid and uid not in found:
                found.append(uid)
    log.info("QIDO-RS: %d studies (%s%s)", len(found), "/".join(cfg.modality),
             f", StudyDate {cfg.date}" if cfg.date else "")  # fmt: skip
    return found[: cfg.limit]


def instances(web, study: str, modalities) -> list[tuple[str, str, str]]:
    """(study, series, SOP instance) UIDs of the study's instances in series of
    ``modalities``."""
    out = []
    for series in web.search_for_series(study_instance_uid=study):
        if value(series, MODALITY) not in modalities:
            continue
        series_uid = value(series, SERIES_UID)
        for item in web.search_for_instances(
            study_instance_uid=study, series_instance_uid=series_uid
        ):
            out.append((study, series_uid, value(item, SOP_UID)))
    return out


def fetch(cfg, folder: str | Path, progress: bool = True) -> tuple[Path, dict]:
    """Fetch every instance to predict into ``folder``; returns the folder and the instances
    that failed (SOP instance UID → why), each logged. An instance already there whole is not
    fetched again."""
    from tqdm import tqdm

    from cxrdet.atomic import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    web = client(cfg)
    wanted, failed = [], {}
    try:
        studies = study_uids(web, cfg)
    except Exception as e:  # noqa: BLE001 (the server unreachable, a refused login: one line)
        raise ValueError(f"DICOMweb {cfg.url}: cannot search its studies: {describe(e)}") from None
    for study in studies:
        try:
            wanted += instances(web, study, cfg.modality)
        except Exception as e:  # noqa: BLE001 (one study must not stop the others)
            failed[study] = f"study {study}: {describe(e)}"
    for study, series, sop in tqdm(wanted, desc="WADO-RS", unit="instance", disable=not progress):
        path = folder / f"{sop}.dcm"
        if path.is_file():
            continue
        try:
            ds = web.retrieve_instance(study, series, sop)
            atomic_write(path, lambda f, d=ds: d.save_as(f, enforce_file_format=True))
        except Exception as e:  # noqa: BLE001
            failed[sop] = describe(e)
    for uid, why in failed.items():
        log.warning("DICOMweb: %s not fetched: %s", uid, why)
    log.info("DICOMweb: %d of %d instances in %s", len(wanted) - len(failed), len(wanted), folder)
    if not any(folder.glob("*.dcm")):
        raise FileNotFoundError(
            f"DICOMweb {cfg.url}: no {'/'.join(cfg.modality)} instance to predict"
        )
    return folder, failed


def store(cfg, paths: list[Path], progress: bool = True) -> dict:
    """STOW-RS ``paths`` to the server, one request per file; returns file → why for those
    that failed (each logged)."""
    import pydicom
    from tqdm import tqdm

    web = client(cfg)
    failed = {}
    for path in tqdm(paths, desc="STOW-RS", unit="file", disable=not progress):
        try:
            web.store_instances(datasets=[pydicom.dcmread(path)])
        except Exception as e:  # noqa: BLE001
            failed[str(path)] = describe(e)
    for path, why in failed.items():
        log.warning("STOW-RS: %s not stored: %s", path, why)
    log.info(
        "STOW-RS: %d of %d results stored at %s", len(paths) - len(failed), len(paths), cfg.url
    )
    return failed


def describe(error: Exception) -> str:
    """An HTTP error as its status and reason, else the error's own line (never a header)."""
    response = getattr(error, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason}"
    return f"{type(error).__name__}: {error}"
