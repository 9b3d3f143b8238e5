"""What the Hydra entry points share: the typed config schemas, argument quoting, and a
misspelt key answered with the key it probably meant."""

from __future__ import annotations

import difflib
import re
from datetime import datetime
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

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


def unknown_override(argv: list[str], config_name: str, conf_dir: Path = CONF_DIR) -> str | None:
    """The first ``key=value`` of ``argv`` whose key the composed config does not have, said in
    one line with the closest key it does have (``did you mean data.batch_size?``); None when
    every key exists, or when the config cannot compose at all (Hydra then says why).

    Hydra's own answer to a misspelt key is to suggest ``+key=value``, which adds the
    misspelling and fails later, deep inside the code that receives it.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import DictConfig

    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()}
    choices, keys = [], []
    for arg in argv[1:]:
        if arg.startswith(("-", "+", "~", "hydra.", "hydra/")) or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        if key.split("/")[0] in groups and "." not in key:
            # A list (logger=[csv,wandb]) composes whole; a sweep's first option is enough.
            first = value if value.startswith("[") else value.split(",")[0]
            choices.append(f"{key}={first}")
        else:
            keys.append(key)
    if not keys:
        return None
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=quote_numeric_choices(["", *choices])[1:])
    except Exception:  # noqa: BLE001 (Hydra's own error says what is wrong with the choices)
        return None
    for key in keys:
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, DictConfig):
                break  # a list or a value: Hydra judges the rest
            names = [str(k) for k in node]  # `part in node` is False for a ??? value
            if part in names:
                node = node._get_node(part)
                continue
            where = ".".join(parts[:i]) or "the config"
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {'.'.join([*parts[:i], close[0]])}?" if close else ""
            return f"{key}: {where} has no key {part!r}{hint}"
    return None


def config_groups(conf_dir: Path = CONF_DIR) -> str:
    """The config groups and their options as ``conf/`` holds them, one group a line (what
    ``train.py --help`` lists; the typed schemas the options extend are not options)."""
    lines = []
    for group in sorted(p for p in conf_dir.iterdir() if p.is_dir() and p.name != "hydra"):
        stems = [p.stem for p in group.glob("*.yaml")]
        options = sorted(stems, key=lambda o: (not o.isdigit(), int(o) if o.isdigit() else 0, o))
        lines.append(f"{group.name}: {', '.join(options)}")
    return "\n".join(lines)


def register_configs() -> None:
    """Give Hydra the typed schemas that ``conf/`` extends: ``data/schema`` (every
    ``conf/data/*.yaml``) and ``predict_schema`` (``conf/predict.yaml``).

    Done when this module is imported, so whatever composes ``CONF_DIR`` (the entry points,
    the EDA's augmentation preview, the tests) finds them."""
    store = ConfigStore.instance()
    store.store(group="data", name="schema", node=DataConfig)
    store.store(name="predict_schema", node=PredictConfig)
    if not OmegaConf.has_resolver("cxrdet_config_groups"):  # train.py --help's group list
        OmegaConf.register_new_resolver("cxrdet_config_groups", lambda: config_groups())
    if not OmegaConf.has_resolver("cxrdet_run_time"):  # run folders: one per launch
        OmegaConf.register_new_resolver("cxrdet_run_time", run_time, use_cache=True)


def run_time() -> str:
    """The launch time as run folders name it, to the millisecond (``2026-12-04_09-30-00-123``):
    two runs started in the same second get folders (and logs) of their own."""
    now = datetime.now()
    return f"{now:%Y-%m-%d_%H-%M-%S}-{now.microsecond // 1000:03d}"


register_configs()
