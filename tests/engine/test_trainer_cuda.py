"""Trainer on CUDA: float16 autocast with a GradScaler whose state is checkpointed and resumed."""

import pytest
import torch

from detector.engine import Trainer
from tests.engine.toy import ToyModel, toy_cfg, toy_loader


def _trainer(out, max_iter: int) -> Trainer:
    torch.manual_seed(0)
    model = ToyModel(dropout=0.5).cuda()
    return Trainer.from_config(
        toy_cfg(out, MAX_ITER=max_iter), model=model, data_loader=toy_loader(),
        amp_enabled=True, amp_dtype="float16", tensorboard=False, progress_bar=False,
    )  # fmt: skip


@pytest.mark.cuda
def test_fp16_grad_scaler_checkpoint_and_resume(tmp_path):
    ref = _trainer(tmp_path / "ref", 6)
    ref.train()
    assert ref.scaler.is_enabled()
    assert ref.unwrapped_model.autocast_dtypes[0] == torch.float16
    final = torch.load(tmp_path / "ref" / "model_final.pth", weights_only=True)
    assert final["scaler"]["scale"] == ref.scaler.get_scale()
    assert len(final["rng"][0]["cuda"]) == torch.cuda.device_count()

    cut = _trainer(tmp_path / "cut", 6)
    cut.max_iter = 4  # stop after the checkpoint of iteration 4
    cut.train()
    resumed = _trainer(tmp_path / "cut", 6)
    assert resumed.resume_or_load(True) == 4
    assert resumed.scaler.get_scale() == cut.scaler.get_scale()
    resumed.train()
    for a, b in zip(
        ref.unwrapped_model.parameters(), resumed.unwrapped_model.parameters(), strict=True
    ):
        assert torch.equal(a, b)
