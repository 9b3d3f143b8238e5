"""Experiment tracking: loggers from config, what every run records, and W&B safety (it never
prompts, hangs or uploads without a configured key)."""

from __future__ import annotations

import csv
import logging
import netrc
import os
import subprocess
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning_fabric.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from cxrdet.atomic import atomic_write

log = logging.getLogger(__name__)


class ContinuedMetricsWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing a run's ``metrics.csv`` instead of deleting it, and
    never leaving it half-written.

    A run resumed in its own folder (``resume=auto``) keeps the rows of the steps before the
    one it resumes from; rows of the steps it trains again (written after its checkpoint,
    before the run stopped) are replaced. Lightning's writer deletes the whole file whenever
    its folder holds one. Whenever the file is rewritten (continued, or a new column), the
    new one is written whole beside it and moved into place (:mod:`cxrdet.atomic`): a kill
    leaves the old rows, not an empty file; new rows are appended.
    """

    def __init__(self, log_dir: str):
        self.continued = False
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        pass  # keep the file: save() continues it

    def _rows(self) -> tuple[list[str], list[dict]]:
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            return list(reader.fieldnames or []), list(reader)

    def _rewrite(self, header: list[str], rows: list[dict]) -> None:
        def write(file):
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)

        atomic_write(self.metrics_file_path, write, mode="w")

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        self._rewrite(fieldnames, self._rows()[1])

    def save(self) -> None:
        if not self.metrics:  # nothing to write: the file is continued at the first rows
            return
        if not self.continued and os.path.isfile(self.metrics_file_path):
            first = min(int(m.get("step", 0)) for m in self.metrics)
            header, rows = self._rows()
            kept = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) < first]
            self._rewrite(header, kept)
            self.metrics_keys = sorted(set(self.metrics_keys) | set(header))
        self.continued = True
        super().save()


class RunCSVLogger(CSVLogger):
    """``<run dir>/csv/metrics.csv`` (Lightning's CSV logger), continued by a resumed run
    (:class:`ContinuedMetricsWriter`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedMetricsWriter(log_dir=self.log_dir)
        return self._experiment


def wandb_key_configured() -> bool:
    """True when W&B has an API key: ``WANDB_API_KEY`` or a ``~/.netrc`` entry (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return bool(path.is_file() and netrc.netrc(path).authenticators("api.wandb.ai"))
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_offline_without_key() -> str:
    """Run W&B offline (``wandb sync`` later) unless a mode is set or a key is configured.

    Returns:
        The W&B mode in force.
    """
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if not wandb_key_configured():
        os.environ["WANDB_MODE"] = "offline"
        log.warning("no W&B API key found: logging offline; upload later with `wandb sync`")
    return os.environ.get("WANDB_MODE", "online")


def build_loggers(logger_cfg: DictConfig | None) -> tuple[list, int]:
    """Instantiate each configured logger (``logger=csv``, ``logger=[csv,wandb]`` ...).

    Returns:
        The loggers, and how many validation images W&B may receive with their boxes: 0 unless
        ``logger.wandb.log_images`` (then ``logger.wandb.n_images``); both are cxrdet options
        that WandbLogger itself does not take.
    """
    loggers, images = [], 0
    for name, cfg in (logger_cfg or {}).items():
        kwargs = OmegaConf.to_container(cfg, resolve=True)
        if name == "wandb":
            wandb_offline_without_key()
            n_images = int(kwargs.pop("n_images", 16))
            images = n_images if kwargs.pop("log_images", False) else 0
        loggers.append(instantiate(kwargs))
    return loggers, images


def git_commit(repo: Path) -> str:
    """The checked-out commit of ``repo`` (``+dirty`` with uncommitted changes), or ``unknown``."""
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", *a], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        return run("rev-parse", "HEAD") + ("+dirty" if run("status", "--porcelain", "-uno") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_info(cfg: DictConfig) -> dict:
    """What each logger records about the run: the resolved config, the code's git commit and
    the Hydra job number (its index within a ``-m`` sweep; 0 for a single run)."""
    job_num = 0
    if HydraConfig.initialized():
        job_num = HydraConfig.get().job.get("num", 0) or 0
    return {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git_commit": git_commit(Path(__file__).resolve().parents[2]),
        "hydra_job_num": int(job_num),
    }
