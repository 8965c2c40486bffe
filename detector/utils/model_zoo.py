"""Weights by name: MODEL.WEIGHT may be a local file, a URL or a catalog name.

    path/to/file.pth | .pkl                          a local file, used as it is
    http://... | https://...                         downloaded once into the cache
    catalog://ImageNetPretrained/MSRA/R-50           maskrcnn_benchmark's catalog names (its
    catalog://Caffe2Detectron/COCO/<id>/<name>       Caffe2 ImageNet and Detectron models)
    torchvision://ResNet50_Weights.IMAGENET1K_V1     torchvision's published weights enums

Downloads go to `torch.hub.get_dir()/checkpoints` (TORCH_HOME moves it), through a temporary
file in that folder that is renamed only once complete and checked: a download that fails or
does not match its hash leaves nothing behind. The hash is the full sha256 where the publisher
gives one, else the hex prefix torchvision's file names carry (``resnet50-0676ba61.pth``).
A file already in the cache is used without any connection. `DETECTOR_CATALOG_URL` replaces the
catalog's server (a mirror, or a test server on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch

__all__ = ["WeightsError", "cached_download", "catalog_url", "is_remote", "resolve_weights"]

CATALOG_URL = "https://dl.fbaipublicfiles.com/detectron"

# maskrcnn_benchmark's ModelCatalog: Caffe2 ImageNet backbones...
_IMAGENET = {
    "MSRA/R-50": "ImageNetPretrained/MSRA/R-50.pkl",
    "MSRA/R-50-GN": "ImageNetPretrained/47261647/R-50-GN.pkl",
    "MSRA/R-101": "ImageNetPretrained/MSRA/R-101.pkl",
    "MSRA/R-101-GN": "ImageNetPretrained/47592356/R-101-GN.pkl",
    "FAIR/20171220/X-101-32x8d": "ImageNetPretrained/20171220/X-101-32x8d.pkl",
}
# ... and Detectron's 12/2017 COCO baselines (<model id>/<name>: the run's signature).
_DETECTRON = {
    "35857197/e2e_faster_rcnn_R-50-C4_1x": "01_33_49.iAX0mXvW",
    "35857345/e2e_faster_rcnn_R-50-FPN_1x": "01_36_30.cUF7QR7I",
    "35857890/e2e_faster_rcnn_R-101-FPN_1x": "01_38_50.sNxI7sX7",
    "36761737/e2e_faster_rcnn_X-101-32x8d-FPN_1x": "06_31_39.5MIHi1fZ",
    "35858791/e2e_mask_rcnn_R-50-C4_1x": "01_45_57.ZgkA7hPB",
    "35858933/e2e_mask_rcnn_R-50-FPN_1x": "01_48_14.DzEQe4wC",
    "35861795/e2e_mask_rcnn_R-101-FPN_1x": "02_31_37.KqyEK4tT",
    "36761843/e2e_mask_rcnn_X-101-32x8d-FPN_1x": "06_35_59.RZotkLKI",
    "37129812/e2e_mask_rcnn_X-152-32x8d-FPN-IN5k_1.44x": "09_35_36.8pzTQKYK",
    "37697547/e2e_keypoint_rcnn_R-50-FPN_1x": "08_42_54.kdzV35ao",
}
_TORCHVISION_HASH = re.compile(r"-([a-f0-9]{6,})\.")
_CHUNK = 1 << 20


class WeightsError(RuntimeError):
    """A weights name that cannot be resolved, or a download that failed."""


def is_remote(spec: str) -> bool:
    """Whether MODEL.WEIGHT names something to download rather than a local file."""
    return spec.startswith(("http://", "https://", "catalog://", "torchvision://"))


def catalog_url(name: str) -> str:
    """The URL of a maskrcnn_benchmark catalog name (without ``catalog://``)."""
    base = os.environ.get("DETECTOR_CATALOG_URL", CATALOG_URL).rstrip("/")
    if name.startswith("ImageNetPretrained/"):
        key = name[len("ImageNetPretrained/") :]
        if key in _IMAGENET:
            return f"{base}/{_IMAGENET[key]}"
    elif name.startswith("Caffe2Detectron/COCO/"):
        key = name[len("Caffe2Detectron/COCO/") :]
        if key in _DETECTRON:
            model_id, model = key.split("/")
            tag = "keypoints_" if "keypoint" in model else ""
            run = f"{model}.yaml.{_DETECTRON[key]}"
            tail = f"{tag}coco_2014_train%3A{tag}coco_2014_valminusminival"
            return f"{base}/{model_id}/12_2017_baselines/{run}/output/train/{tail}/generalized_rcnn/model_final.pkl"  # noqa: E501
    known = [f"ImageNetPretrained/{k}" for k in _IMAGENET]
    known += [f"Caffe2Detectron/COCO/{k}" for k in _DETECTRON]
    raise WeightsError(f"catalog://{name} is not in the catalog; known: {', '.join(known)}")


def _torchvision_url(name: str) -> str:
    from torchvision.models import get_weight

    try:
        return str(get_weight(name).url)
    except (ValueError, AttributeError, KeyError) as e:
        raise WeightsError(
            f"torchvision://{name}: not a torchvision weights name such as "
            f"ResNet50_Weights.IMAGENET1K_V1 ({e})"
        ) from None


def cache_path(url: str, cache_dir: str | Path | None = None) -> Path:
    """Where `url` is kept: its file name, or its whole path when the name is generic."""
    folder = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    path = urlparse(url).path
    name = Path(path).name
    if name == "model_final.pkl":  # every Detectron run has one: keep the run in the name
        name = path.strip("/").replace("/", "_").replace("%3A", "_")
    return folder / name


def _expected_hash(url: str, sha256: str | None) -> str | None:
    if sha256:
        return sha256.lower()
    match = _TORCHVISION_HASH.search(Path(urlparse(url).path).name)
    return match.group(1) if match else None


def cached_download(
    url: str,
    *,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """The cached copy of `url`, downloaded first if absent (see the module docstring)."""
    target = cache_path(url, cache_dir)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        digest = _fetch(url, partial, progress)
        expected = _expected_hash(url, sha256)
        if expected is not None and not digest.startswith(expected):
            raise WeightsError(
                f"{url}: the downloaded file's sha256 is {digest}, expected {expected}...; the "
                "download is corrupt or the file changed on the server; nothing was kept"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _fetch(url: str, dest: Path, progress: bool) -> str:
    """Streams `url` into `dest`; returns the sha256 hex digest of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=30) as response, dest.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = _progress_bar(total, Path(urlparse(url).path).name, progress)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except urllib.error.HTTPError as e:
        raise WeightsError(
            f"could not download {url}: the server answered HTTP {e.code} ({e.reason}); check the "
            "name or URL, or set MODEL.WEIGHT to a local file"
        ) from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        where = cache_path(url, dest.parent)
        raise WeightsError(
            f"could not download {url} ({reason}); without a connection, fetch the file on "
            f"another machine and put it at {where}, or set MODEL.WEIGHT to a local file"
        ) from None
    return digest.hexdigest()


def _progress_bar(total: int | None, name: str, enabled: bool):  # noqa: ANN202 (tqdm or None)
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}", file=sys.stderr)


def resolve_weights(spec: str | Path, *, progress: bool = True) -> Path:
    """The local file for MODEL.WEIGHT `spec` (downloading it if it is a URL or a name)."""
    text = str(spec)
    if text.startswith("catalog://"):
        return cached_download(catalog_url(text[len("catalog://") :]), progress=progress)
    if text.startswith("torchvision://"):
        return cached_download(_torchvision_url(text[len("torchvision://") :]), progress=progress)
    if text.startswith(("http://", "https://")):
        return cached_download(text, progress=progress)
    return Path(text)
