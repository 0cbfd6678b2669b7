"""The vision encoder's patch embedding as one matrix product.

Qwen2.5-VL embeds each 2 x 14 x 14 x 3 video patch with a Conv3d whose kernel equals its
stride: every patch meets the kernel exactly once, so the convolution is a product of the
flattened patches with the flattened kernel. On the CPU the product is 5-10x faster than the
convolution (which dominated the vision encoder of the small presets); the weights, their
state-dict key and the results (to float rounding) are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch


class PatchProjection(torch.nn.Module):
    """Stands in for `patch_embed.proj` (Conv3d, kernel = stride, no padding); shares its
    weight Parameter, so saving, loading, LoRA and dtype casts see the same tensor."""

    def __init__(self, conv: torch.nn.Conv3d):
        super().__init__()
        if tuple(conv.kernel_size) != tuple(conv.stride) or any(conv.padding):
            raise ValueError("PatchProjection needs a convolution with kernel = stride, no padding")
        self.weight = conv.weight
        if conv.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = conv.bias
        self.kernel_size = tuple(conv.kernel_size)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """[N, C, T, P, P] patches -> [N, out] embeddings."""
        flat = patches.reshape(patches.shape[0], -1)
        return torch.nn.functional.linear(
            flat, self.weight.reshape(self.weight.shape[0], -1), self.bias
        )


def use_patch_projection(model: Any) -> None:
    """Swap the vision patch embedding's Conv3d for a `PatchProjection` (in place)."""
    embed = model.model.visual.patch_embed
    if isinstance(embed.proj, torch.nn.Conv3d):
        embed.proj = PatchProjection(embed.proj)
