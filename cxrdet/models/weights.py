"""Pretrained weights: a torchvision name or a local file, loaded without surprises offline.

A torchvision name (``DEFAULT``, ``COCO_V1``, ``IMAGENET1K_V1``) is read from torchvision's
cache, ``$TORCH_HOME/hub/checkpoints/<file>``, and downloaded there only when missing. When it is
neither cached nor downloadable, :class:`WeightsUnavailable` says in one line which file
torchvision looks for and the two cures. A local file may be ``.pth``/``.pt``/``.bin`` (a state
dict), ``.ckpt`` (a cxrdet or other Lightning checkpoint) or ``.safetensors``.

For an offline machine, run where there is network::

    cxrdet weights save DIR    # DIR/hub/checkpoints/<file> + DIR/SHA256SUMS

then copy DIR over and ``export TORCH_HOME=DIR`` (or pass ``model.weights=DIR/hub/...pth``).
``cxrdet weights list`` says which files are cached here.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import socket
import sys
from enum import Enum
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

from cxrdet.models.safe_load import UntrustedFile, safe_load

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
# The torchvision weights the configs name: the COCO detector and the ImageNet ResNet-50.
NAMED = {
    "detector": FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
    "backbone": ResNet50_Weights.IMAGENET1K_V1,
}
DOWNLOAD_TIMEOUT_S = 30  # a machine whose DNS hangs fails after this instead of never


class WeightsUnavailable(FileNotFoundError):
    """A named weights file is neither cached nor downloadable, or a local file is missing."""


def no_source(source) -> bool:
    """True for the ways a config says "no pretrained weights": null, "", none."""
    return source is None or str(source).strip() in ("", "none", "None", "null")


def is_local(source) -> bool:
    """A local file (by its suffix, or a path with a folder) rather than a torchvision name."""
    text = str(source)
    return Path(text).suffix in FILE_SUFFIXES or "/" in text or "\\" in text


def cache_file(weights: Enum) -> Path:
    """Where torchvision reads (and downloads) ``weights``: ``<hub dir>/checkpoints/<file>``."""
    name = Path(urlparse(weights.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def resolve_name(enum_cls, name: str, key: str) -> Enum:
    """``DEFAULT``, ``COCO_V1`` ... → the torchvision enum member; anything else refused by name."""
    try:
        return enum_cls.verify(name)
    except (ValueError, KeyError, AttributeError, TypeError):
        names = ", ".join(["DEFAULT", *enum_cls.__members__])
        raise ValueError(
            f"{key}={name}: neither a torchvision name ({names}) nor a weights file "
            f"({', '.join(FILE_SUFFIXES)})"
        ) from None


def named_state_dict(weights: Enum, key: str, given: str | None = None) -> dict:
    """The state dict of torchvision ``weights`` from the cache, downloading it when missing;
    ``given`` is the name as the config wrote it (``DEFAULT``), for the error."""
    path = cache_file(weights)
    if not path.is_file():
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
        except OSError as e:  # URLError, DNS failure, timeout, refused connection
            raise WeightsUnavailable(
                f"{key}={given or weights.name}: {path} is not cached and cannot be downloaded "
                f"({getattr(e, 'reason', e)}); copy the file there (cxrdet weights "
                f"save DIR, run where there is network), pass a local file "
                f"({key}=/path/to/{path.name}), or start from random weights with {key}=null "
                "(no download: enough to check the pipeline, but a detector from random init "
                "needs far longer training to learn what the COCO weights give)"
            ) from None
        except RuntimeError as e:  # the download failed torchvision's checksum
            raise ValueError(f"{key}={given or weights.name}: {e}") from None
        finally:
            socket.setdefaulttimeout(previous)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file in the cache
        raise ValueError(
            f"{key}={given or weights.name}: {path} cannot be read as weights ({e}); delete it "
            "(torchvision then downloads it again) or copy a good one there"
        ) from None


def _check_file(path: Path, key: str) -> None:
    if path.suffix not in FILE_SUFFIXES:
        raise ValueError(
            f"{key}={path}: unsupported weights file; expected one of {', '.join(FILE_SUFFIXES)}"
        )
    if not path.is_file():
        raise WeightsUnavailable(f"{key}={path}: weights file not found")


def file_state_dict(path: str | Path, key: str, trust: bool = False) -> dict:
    """The tensors of a local weights file (a Lightning checkpoint's ``state_dict``): tensors
    and plain values only, unless ``trust`` (:mod:`cxrdet.models.safe_load`)."""
    path = Path(path)
    _check_file(path, key)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = safe_load(path, trust, "trust_checkpoint=true")
    except UntrustedFile as e:
        raise UntrustedFile(f"{key}={e}") from None
    except Exception as e:
        raise ValueError(f"{key}={path}: cannot read it as weights ({e})") from None
    for wrapper in ("state_dict", "model"):  # Lightning; torchvision's references, Detectron2
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{key}={path}: expected a state dict, got {type(state).__name__}")
    return state


def load_into(module: nn.Module, state: dict, origin: str) -> set[str]:
    """Copy the tensors of ``state`` that fit ``module`` (a ``model.``/``module.`` prefix
    stripped when that fits more); log how many loaded and which were skipped. Returns the
    names (``module``'s) that loaded."""
    own = module.state_dict()
    best, usable = {}, {}
    for prefix in ("", "model.", "module.", "model.module."):
        named = {k.removeprefix(prefix): v for k, v in state.items() if torch.is_tensor(v)}
        fits = {k: v for k, v in named.items() if k in own and own[k].shape == v.shape}
        if len(fits) > len(usable):
            best, usable = named, fits
    if not usable:
        raise ValueError(f"{origin}: no tensor matches the model; is it the right architecture?")
    skipped = sorted(set(best) - set(usable))
    module.load_state_dict(usable, strict=False)
    shown = ", ".join(skipped[:4]) + (", ..." if len(skipped) > 4 else "")
    log.info(
        "loaded %d of the model's %d tensors from %s; skipped %d%s",
        len(usable),
        len(own),
        origin,
        len(skipped),
        f" whose name or shape differs ({shown})" if skipped else "",
    )
    return set(usable)


def load_weights(module: nn.Module, source, enum_cls, key: str, trust: bool = False) -> set[str]:
    """Load ``source`` (a torchvision name of ``enum_cls`` or a local file, read with ``trust``
    as :func:`file_state_dict` reads it) into ``module``; the names that loaded."""
    if is_local(source):
        return load_into(module, file_state_dict(source, key, trust), str(source))
    weights = resolve_name(enum_cls, str(source), key)
    return load_into(
        module, named_state_dict(weights, key, str(source)), f"torchvision {weights.name}"
    )


def coco_hash_prefix() -> str:
    """The start of the SHA-256 torchvision names its COCO_V1 detector file by
    (``fasterrcnn_resnet50_fpn_coco-<prefix>.pth``) and checks it against on download."""
    return Path(urlparse(NAMED["detector"].url).path).stem.rsplit("-", 1)[-1]


def frozen_bn_eps(detector_weights) -> float:
    """FrozenBatchNorm eps the detector weights were trained with: 0.0 for torchvision's COCO_V1
    (as torchvision's own builder sets it), else 1e-5. A local file is recognised by its
    content (its SHA-256 starts as the COCO file's), whatever its name; one that no longer
    exists (a checkpoint made before the eps was recorded) by its name."""
    coco = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
    if no_source(detector_weights):
        return 1e-5
    if is_local(detector_weights):
        path = Path(detector_weights)
        if path.is_file():
            return 0.0 if sha256(path).startswith(coco_hash_prefix()) else 1e-5
        return 0.0 if path.name == cache_file(coco).name else 1e-5
    try:
        return (
            0.0 if FasterRCNN_ResNet50_FPN_Weights.verify(str(detector_weights)) == coco else 1e-5
        )
    except (ValueError, KeyError, AttributeError, TypeError):
        return 1e-5


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_sha256(ckpts: list, model_file: str | None = None) -> str:
    """The SHA-256 of an exported model file, or of the checkpoint (an ensemble's: of its
    members' hashes in order)."""
    files = [model_file] if model_file else [str(c) for c in ckpts]
    hashes = [sha256(Path(f)) for f in files]
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256(" ".join(hashes).encode()).hexdigest()


def save(out_dir: Path) -> list[Path]:
    """Copy (from the cache) or download every named weights file into ``out_dir`` laid out as a
    ``TORCH_HOME`` (``hub/checkpoints/<file>``), with ``SHA256SUMS``."""
    target = out_dir / "hub" / "checkpoints"
    target.mkdir(parents=True, exist_ok=True)
    files = []
    for role, weights in NAMED.items():
        cached, dst = cache_file(weights), target / cache_file(weights).name
        if cached.is_file():
            if dst.resolve() != cached.resolve():  # DIR may be this machine's TORCH_HOME
                shutil.copyfile(cached, dst)
        else:
            print(f"downloading the {role} weights {weights} from {weights.url}", flush=True)
            digest = Path(urlparse(weights.url).path).stem.rsplit("-", 1)[-1]
            torch.hub.download_url_to_file(weights.url, str(dst), hash_prefix=digest)
        files.append(dst)
    lines = [f"{sha256(f)}  hub/checkpoints/{f.name}" for f in files]
    (out_dir / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    for line in lines:
        print(line)
    return files


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="cxrdet weights",
        description="Pretrained weights for offline machines.",
        epilog="save DIR where there is network; copy DIR over; export TORCH_HOME=DIR there.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="write the named weights files + SHA256SUMS into DIR")
    s.add_argument("dir", type=Path, help="a folder laid out as a TORCH_HOME (hub/checkpoints/)")
    sub.add_parser("list", help="the weights files the configs name and whether they are cached")
    a = p.parse_args(argv)
    if a.command == "list":
        for role, weights in NAMED.items():
            path = cache_file(weights)
            print(f"{role:<9s} {weights}  {path}  {'cached' if path.is_file() else 'not cached'}")
        return
    try:
        files = save(a.dir)
    except OSError as e:
        sys.exit(
            f"error: cannot fetch the weights ({getattr(e, 'reason', e)}); run this where "
            "there is network, or copy the files from a machine that has them cached"
        )
    print(
        f"wrote {len(files)} files to {a.dir / 'hub' / 'checkpoints'}; on the offline machine: "
        f"export TORCH_HOME={a.dir}"
    )


if __name__ == "__main__":
    main()
