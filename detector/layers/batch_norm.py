"""FrozenBatchNorm2d: batch normalization with fixed statistics and affine parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are buffers, never updated.

    Computes ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel,
    as torchvision.ops.FrozenBatchNorm2d (``eps=1e-5``). State dicts of ``nn.BatchNorm2d``,
    torchvision's and maskrcnn_benchmark's FrozenBatchNorm2d load as they are (a
    ``num_batches_tracked`` entry is dropped).

    Shapes: input and output ``(N, C, H, W)``.
    """

    # The buffers, declared for type checkers only: TorchScript would read class annotations
    # (strings under `from __future__ import annotations`) and fail.
    if TYPE_CHECKING:
        weight: Tensor
        bias: Tensor
        running_mean: Tensor
        running_var: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(  # pyright: ignore[reportUnknownMemberType]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        # Fold the four buffers into one scale and one shift: (C,) -> (1, C, 1, 1).
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        scale = scale.reshape(1, -1, 1, 1).to(x.dtype)
        shift = shift.reshape(1, -1, 1, 1).to(x.dtype)
        # x * scale + shift, rounded as torchvision's (not fused), with one allocation
        return (x * scale).add_(shift)

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Returns `module` with every BatchNorm2d/SyncBatchNorm replaced by a FrozenBatchNorm2d
        holding its statistics (in place for children; a top-level BN is returned converted)."""
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, eps=module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.running_mean is not None and module.running_var is not None:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            converted = cls.convert_frozen_batchnorm(child)
            if converted is not child:
                setattr(module, name, converted)
        return module

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
