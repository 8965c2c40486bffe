"""Weights by name (detector.utils.model_zoo) against an HTTP server on 127.0.0.1 started here:
the first call downloads (progress bar, hash checked), the second is a cache hit with no
connection; a wrong hash and an unreachable host are clear errors that leave no partial file;
catalog:// and torchvision:// names resolve; a Caffe2 ImageNet .pkl and torchvision detection
weights load into our models through MODEL.WEIGHT."""

from __future__ import annotations

import hashlib
import http.server
import pickle
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.config import get_cfg, unlocked
from detector.engine.checkpoint import Checkpointer, CheckpointError
from detector.modeling.backbone import build_backbone
from detector.modeling.backbone.weights import caffe2_to_torchvision
from detector.utils import model_zoo
from detector.utils.model_zoo import WeightsError, cached_download, resolve_weights


class _Server:
    """Serves a folder on 127.0.0.1 and counts the requests."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    root = tmp_path / "www"
    root.mkdir()
    s = _Server(root)
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home / "hub" / "checkpoints"


def _write(root: Path, relative: str, payload: bytes) -> str:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)
    return hashlib.sha256(payload).hexdigest()


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_download_then_cache_hit_without_connection(server, cache, tmp_path, capsys):
    payload = b"weights" * 100_000
    digest = _write(tmp_path / "www", "models/r50.pth", payload)
    url = f"{server.url}/models/r50.pth"
    first = cached_download(url, sha256=digest)
    assert first == cache / "r50.pth" and first.read_bytes() == payload
    assert "downloading r50.pth" in capsys.readouterr().err  # the progress bar
    assert server.requests == ["/models/r50.pth"]
    server.close()  # no server any more: the second call must not connect
    assert cached_download(url, sha256=digest) == first
    assert server.requests == ["/models/r50.pth"]
    assert sorted(p.name for p in cache.iterdir()) == ["r50.pth"]


def test_torchvision_style_hash_prefix_in_the_name_is_checked(server, cache, tmp_path):
    payload = b"abc" * 1000
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    _write(tmp_path / "www", f"resnet-{prefix}.pth", payload)
    assert cached_download(f"{server.url}/resnet-{prefix}.pth").read_bytes() == payload
    _write(tmp_path / "www", "resnet-0123abcd.pth", payload)
    with pytest.raises(WeightsError, match=r"sha256 is [0-9a-f]{64}, expected 0123abcd"):
        cached_download(f"{server.url}/resnet-0123abcd.pth")
    assert sorted(p.name for p in cache.iterdir()) == [f"resnet-{prefix}.pth"]


def test_wrong_hash_is_an_error_and_leaves_nothing(server, cache, tmp_path):
    _write(tmp_path / "www", "w.pth", b"payload")
    with pytest.raises(WeightsError, match="nothing was kept"):
        cached_download(f"{server.url}/w.pth", sha256="0" * 64)
    assert list(cache.iterdir()) == []


def test_unreachable_host_names_the_url_and_where_to_put_the_file(cache):
    url = f"http://127.0.0.1:{_unused_port()}/ImageNetPretrained/MSRA/R-50.pkl"
    with pytest.raises(WeightsError) as info:
        cached_download(url)
    message = str(info.value)
    assert message.startswith(f"could not download {url} (")
    assert f"put it at {cache / 'R-50.pkl'}" in message
    assert list(cache.iterdir()) == []


def test_missing_file_on_the_server_is_a_clear_error(server, cache):
    with pytest.raises(
        WeightsError, match="could not download .*/nope.pth: the server answered HTTP 404"
    ):
        cached_download(f"{server.url}/nope.pth")


def test_catalog_names(monkeypatch):
    monkeypatch.delenv("DETECTOR_CATALOG_URL", raising=False)
    assert model_zoo.catalog_url("ImageNetPretrained/MSRA/R-50") == (
        "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl"
    )
    assert model_zoo.catalog_url("ImageNetPretrained/MSRA/R-101-GN").endswith(
        "/ImageNetPretrained/47592356/R-101-GN.pkl"
    )
    url = model_zoo.catalog_url("Caffe2Detectron/COCO/35858933/e2e_mask_rcnn_R-50-FPN_1x")
    assert url == (
        "https://dl.fbaipublicfiles.com/detectron/35858933/12_2017_baselines/"
        "e2e_mask_rcnn_R-50-FPN_1x.yaml.01_48_14.DzEQe4wC/output/train/"
        "coco_2014_train%3Acoco_2014_valminusminival/generalized_rcnn/model_final.pkl"
    )
    assert model_zoo.cache_path(url, "/c").name.endswith("generalized_rcnn_model_final.pkl")
    with pytest.raises(WeightsError, match="catalog://ImageNetPretrained/MSRA/R-51 is not in"):
        model_zoo.catalog_url("ImageNetPretrained/MSRA/R-51")


def test_torchvision_names_resolve_to_their_published_url(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(model_zoo, "cached_download", lambda url, **kw: seen.append(url) or url)
    resolve_weights("torchvision://ResNet50_Weights.IMAGENET1K_V1")
    resolve_weights("torchvision://FasterRCNN_ResNet50_FPN_Weights.COCO_V1")
    assert seen[0].endswith("/resnet50-0676ba61.pth")
    assert seen[1].endswith("/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")
    with pytest.raises(WeightsError, match="torchvision://ResNet50_Weights.NOPE: not a"):
        resolve_weights("torchvision://ResNet50_Weights.NOPE")


def test_local_paths_are_left_alone():
    assert resolve_weights("runs/x/model_final.pth") == Path("runs/x/model_final.pth")


def _caffe2_resnet18_blobs(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A Caffe2-named copy of a torchvision resnet18's weights (what the catalog's .pkl hold)."""
    state = model.state_dict()
    blobs = {"conv1_w": state["conv1.weight"].numpy()}
    blobs["res_conv1_bn_s"], blobs["res_conv1_bn_b"] = _folded(state, "bn1")
    for k in range(1, 5):
        for i in range(2):
            p, c = f"layer{k}.{i}", f"res{k + 1}_{i}"
            for conv, branch in (("1", "a"), ("2", "b")):
                blobs[f"{c}_branch2{branch}_w"] = state[f"{p}.conv{conv}.weight"].numpy()
                s, b = _folded(state, f"{p}.bn{conv}")
                blobs[f"{c}_branch2{branch}_bn_s"], blobs[f"{c}_branch2{branch}_bn_b"] = s, b
            if f"{p}.downsample.0.weight" in state:
                blobs[f"{c}_branch1_w"] = state[f"{p}.downsample.0.weight"].numpy()
                s, b = _folded(state, f"{p}.downsample.1")
                blobs[f"{c}_branch1_bn_s"], blobs[f"{c}_branch1_bn_b"] = s, b
    blobs["pred_w"] = np.zeros((1000, 512), np.float32)
    return blobs


def _folded(state: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Batch norm folded into scale and shift, as Caffe2 stores it."""
    scale = state[f"{name}.weight"] / torch.sqrt(state[f"{name}.running_var"] + 1e-5)
    shift = state[f"{name}.bias"] - state[f"{name}.running_mean"] * scale
    return scale.numpy(), shift.numpy()


def test_catalog_pkl_downloads_converts_and_loads(server, cache, tmp_path, monkeypatch):
    """catalog://ImageNetPretrained/... through MODEL.WEIGHT: served here, converted from Caffe2
    names, and our R-18 trunk computes what the torchvision network it came from computes."""
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    for m in reference.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    payload = pickle.dumps({"blobs": _caffe2_resnet18_blobs(reference)})
    _write(tmp_path / "www", "ImageNetPretrained/MSRA/R-50.pkl", payload)
    monkeypatch.setenv("DETECTOR_CATALOG_URL", server.url)

    cfg = get_cfg()
    with unlocked(cfg):
        cfg.MODEL.BACKBONE.CONV_BODY = "R-18-FPN"
        cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT = 0
        cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
        cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 256
    backbone = build_backbone(cfg).eval()
    weight = "catalog://ImageNetPretrained/MSRA/R-50"  # served here: a resnet18 under that name
    Checkpointer(tmp_path / "out", model=backbone).load_weights(weight)
    assert server.requests == ["/ImageNetPretrained/MSRA/R-50.pkl"]
    assert (cache / "R-50.pkl").is_file()
    x = torch.randn(1, 3, 64, 64)
    r = reference
    with torch.no_grad():
        ours = list(backbone.body(x).values())[-1]  # res5
        stem = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        expected = r.layer4(r.layer3(r.layer2(r.layer1(stem))))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_caffe2_conversion_drops_the_classifier_and_adds_unit_statistics():
    blobs = {
        "conv1_w": np.ones((4, 3, 7, 7), np.float32),
        "res_conv1_bn_s": np.full(4, 2.0, np.float32),
        "res_conv1_bn_b": np.zeros(4, np.float32),
        "res2_0_branch2a_gn_s": np.ones(4, np.float32),
        "pred_w": np.zeros((10, 4), np.float32),
    }
    state = caffe2_to_torchvision(blobs)
    assert sorted(state) == [
        "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.weight", "conv1.weight",
        "layer1.0.bn1.weight",
    ]  # fmt: skip
    assert torch.equal(state["bn1.running_var"], torch.ones(4))


def test_missing_local_weight_names_the_ways_to_get_weights(tmp_path):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="catalog://ImageNetPretrained/MSRA/R-50"):
        Checkpointer(tmp_path, model=model).load_weights(tmp_path / "nope.pth")


def test_unreachable_catalog_is_a_checkpoint_error(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("DETECTOR_CATALOG_URL", f"http://127.0.0.1:{_unused_port()}")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"^MODEL.WEIGHT catalog://.*could not download"):
        Checkpointer(tmp_path, model=model).load_weights("catalog://ImageNetPretrained/MSRA/R-50")
