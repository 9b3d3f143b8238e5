"""What the Hydra entry points share: the typed config schemas and argument quoting."""

from __future__ import annotations

import re
from pathlib import Path

from hydra.core.config_store import ConfigStore

from cxrdet.data.config import DataConfig
from cxrdet.inference.config import PredictConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def quote_numeric_choices(argv: list[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """Quote numeric config-group choices so ``data=512`` (and ``data=256,512``) work.

    Hydra parses ``data=512`` as the integer 512 and rejects it as a group choice; quoting it
    (``data='512'``) is Hydra's documented remedy. This applies that quoting for the groups in
    ``conf_dir`` that have numeric option names, leaving every other argument untouched.
    """
    groups = {p.parent.name for p in conf_dir.glob("*/*.yaml") if p.stem.isdigit()}
    if not groups:
        return argv
    pattern = re.compile(rf"^([+~]*(?:{'|'.join(sorted(groups))}))=(\d+(?:,\d+)*)$")
    out = []
    for arg in argv:
        m = pattern.match(arg)
        if m:
            arg = m.group(1) + "=" + ",".join(f"'{v}'" for v in m.group(2).split(","))
        out.append(arg)
    return out


def register_configs() -> None:
    """Give Hydra the typed schemas that ``conf/`` extends: ``data/schema`` (every
    ``conf/data/*.yaml``) and ``predict_schema`` (``conf/predict.yaml``).

    Done when this module is imported, so whatever composes ``CONF_DIR`` (the entry points,
    the EDA's augmentation preview, the tests) finds them."""
    store = ConfigStore.instance()
    store.store(group="data", name="schema", node=DataConfig)
    store.store(name="predict_schema", node=PredictConfig)


register_configs()
