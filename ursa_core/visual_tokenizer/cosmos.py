"""Cosmos DV 4x8x8 FSQ video tokenizer (`AutoencoderVQCosmos3D`, URSA FSQ320; docs/ARCHITECTURE.md,
"Visual tokenizers").

Module attribute names mirror the official state-dict keys (encoder.down_blocks.0.resnets.1.conv1.0.weight, ...).
Time is causal everywhere except the mid-block temporal attention, which sees the whole clip (as the reference).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from . import fsq, haar
from .tiling import VisualTokenizer

COSMOS_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
    "latent_channels": 16, "norm_num_groups": 1, "sample_size": 1024, "sample_frames": 17,
    "num_vq_embeddings": 64000, "vq_embed_dim": 6, "patch_size": 4, "temporal_stride": 4, "spatial_stride": 8,
}
NORM_EPS = 1e-6


def _triple(value) -> tuple[int, int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3


class CausalConv3d(nn.Conv3d):
    """Conv3d that sees only the past in time: kernel_t - 1 replicated copies of the first frame in front."""

    def __init__(self, in_channels: int, out_channels: int, kernel=1, stride=1, padding=0):
        kernel, stride, padding = _triple(kernel), _triple(stride), _triple(padding)
        super().__init__(in_channels, out_channels, kernel, stride, (0,) + padding[1:])
        self.front_pad = kernel[0] - stride[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.front_pad > 0:
            x = F.pad(x, (0, 0, 0, 0, self.front_pad, 0), mode="replicate")
        return super().forward(x)


def factorized_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 spatial conv followed by a causal 3-tap temporal conv (keys .0 and .1)."""
    return nn.Sequential(CausalConv3d(in_channels, out_channels, (1, 3, 3), 1, (0, 1, 1)),
                         CausalConv3d(out_channels, out_channels, (3, 1, 1)))


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm applied to every frame on its own (statistics over C, H, W of one frame, never over time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        flat = x.transpose(1, 2).reshape(batch * frames, channels, height, width)
        return super().forward(flat).reshape(batch, frames, channels, height, width).transpose(1, 2)


def frame_norm(channels: int) -> FrameGroupNorm:
    # The reference uses one group whatever config.norm_num_groups says.
    return FrameGroupNorm(1, channels, eps=NORM_EPS)


class AxisAttention(nn.Module):
    """Single-head self-attention with residual, over the pixels of each frame or over the frames of each pixel."""

    def __init__(self, channels: int, over_time: bool):
        super().__init__()
        self.over_time = over_time
        self.group_norm = frame_norm(channels)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        normed = self.group_norm(x)
        if self.over_time:  # sequences of frames, one per (b, y, x)
            seq = normed.permute(0, 3, 4, 2, 1).reshape(batch * height * width, frames, channels)
        else:  # sequences of pixels, one per (b, t)
            seq = normed.permute(0, 2, 3, 4, 1).reshape(batch * frames, height * width, channels)
        attended = F.scaled_dot_product_attention(self.to_q(seq), self.to_k(seq), self.to_v(seq))
        out = self.to_out[0](attended)
        if self.over_time:
            out = out.reshape(batch, height, width, frames, channels).permute(0, 4, 3, 1, 2)
        else:
            out = out.reshape(batch, frames, height, width, channels).permute(0, 4, 1, 2, 3)
        return x + out


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = frame_norm(in_channels)
        self.conv1 = factorized_conv(in_channels, out_channels)
        self.norm2 = frame_norm(out_channels)
        self.conv2 = factorized_conv(out_channels, out_channels)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        hidden = self.conv1(F.silu(self.norm1(x)))
        return self.conv2(F.silu(self.norm2(hidden))) + skip


class SpatialDownsample(nn.Module):
    """Halve H and W: strided 3x3 conv (zero pad right/bottom) plus 2x2 average pool, then a 1x1 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = CausalConv3d(channels, channels, (1, 3, 3), (1, 2, 2))
        self.conv3 = CausalConv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool3d(x, (1, 2, 2), (1, 2, 2))
        return self.conv3(self.conv1(F.pad(x, (0, 1, 0, 1, 0, 0))) + pooled)


class SpatialUpsample(nn.Module):
    """Double H and W: nearest repeat, residual 3x3 conv, then a 1x1 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv2 = CausalConv3d(channels, channels, (1, 3, 3), 1, (0, 1, 1))
        self.conv3 = CausalConv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
        return self.conv3(self.conv2(x) + x)


class ResStage(nn.Module):
    """ResBlocks then an optional resize (no-op resizes of the reference have no weights and are omitted)."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, down: bool = False, up: bool = False):
        super().__init__()
        self.resnets = nn.ModuleList(ResBlock(in_channels if i == 0 else out_channels, out_channels)
                                     for i in range(depth))
        self.downsamplers = nn.ModuleList([SpatialDownsample(out_channels)] if down else [])
        self.upsamplers = nn.ModuleList([SpatialUpsample(out_channels)] if up else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in [*self.resnets, *self.downsamplers, *self.upsamplers]:
            x = block(x)
        return x


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(channels, channels), ResBlock(channels, channels)])
        attention = nn.Sequential(AxisAttention(channels, over_time=False), AxisAttention(channels, over_time=True))
        self.attentions = nn.ModuleList([attention])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


def _spatial_resizes(config: Mapping[str, Any]) -> int:
    """How many 2x spatial resizes sit between the Haar patcher and the latent grid."""
    patch, ts, ss = config["patch_size"], config["temporal_stride"], config["spatial_stride"]
    levels = len(config["block_out_channels"])
    resizes = int(math.log2(ss)) - int(math.log2(patch))
    if ts != patch:
        raise CheckpointError(f"vae config: temporal_stride={ts} != patch_size={patch} is not supported "
                              "(URSA's Cosmos tokenizer compresses time only in the Haar patcher)")
    if 2 ** int(math.log2(patch)) != patch or ss != patch * 2 ** resizes or not 0 <= resizes <= levels - 2:
        raise CheckpointError(f"vae config: patch_size={patch}, spatial_stride={ss} and {levels} "
                              "block_out_channels do not describe a Cosmos tokenizer")
    return resizes


class CosmosEncoder(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        dims, depth, patch = list(config["block_out_channels"]), config["layers_per_block"], config["patch_size"]
        resizes = _spatial_resizes(config)
        self.patch_size, self.haar_levels = patch, int(math.log2(patch))
        self.conv_in = factorized_conv(config["in_channels"] * patch ** 3, dims[0])
        self.down_blocks = nn.ModuleList(ResStage(dims[i], dims[i + 1], depth, down=i < resizes)
                                         for i in range(len(dims) - 1))
        self.mid_block = MidBlock(dims[-1])
        self.conv_norm_out = frame_norm(dims[-1])
        self.conv_out = factorized_conv(dims[-1], config["latent_channels"])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # The first frame stands alone: repeat it to a full temporal patch so it becomes its own latent.
        first = pixels[:, :, :1].expand(-1, -1, self.patch_size, -1, -1)
        x = haar.patchify(torch.cat([first, pixels[:, :, 1:]], 2), self.haar_levels)
        x = self.conv_in(x)
        for stage in self.down_blocks:
            x = stage(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class CosmosDecoder(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        dims, depth, patch = list(config["block_out_channels"])[::-1], config["layers_per_block"], config["patch_size"]
        resizes = _spatial_resizes(config)
        self.patch_size, self.haar_levels = patch, int(math.log2(patch))
        self.conv_in = factorized_conv(config["latent_channels"], dims[0])
        self.mid_block = MidBlock(dims[0])
        self.up_blocks = nn.ModuleList(ResStage(dims[max(i - 1, 0)], dims[i], depth + 1, up=i < resizes)
                                       for i in range(len(dims) - 1))
        self.conv_norm_out = frame_norm(dims[-2])
        self.conv_out = factorized_conv(dims[-2], config["out_channels"] * patch ** 3)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(latents))
        for stage in self.up_blocks:
            x = stage(x)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        # The first latent's patch holds 4 copies of the first frame; keep one.
        return haar.unpatchify(x, self.haar_levels)[:, :, self.patch_size - 1:]


def cosmos_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the known keys of vae/config.json (unknown keys are ignored)."""
    config = dict(COSMOS_DEFAULTS)
    config.update({k: v for k, v in raw.items() if k in COSMOS_DEFAULTS})
    config["block_out_channels"] = tuple(config["block_out_channels"])
    if config["num_vq_embeddings"] != fsq.codebook_size() or config["vq_embed_dim"] != len(fsq.FSQ_LEVELS):
        raise CheckpointError(f"vae config: num_vq_embeddings={config['num_vq_embeddings']}, vq_embed_dim="
                              f"{config['vq_embed_dim']} do not match FSQ levels {fsq.FSQ_LEVELS} (64000 codes, 6 dims)")
    return config


class CosmosFSQTokenizer(VisualTokenizer):
    """Video <-> FSQ ids: [B, 3, 1+4k, H, W] in [-1, 1] <-> int64 [B, 1+k, H/8, W/8]."""

    kind = "fsq"

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__()
        self.config = cosmos_config(config or {})
        self.temporal_stride = self.config["temporal_stride"]
        self.spatial_stride = self.config["spatial_stride"]
        self.codebook_size = fsq.codebook_size()
        self.encoder = CosmosEncoder(self.config)
        self.decoder = CosmosDecoder(self.config)
        self.quant_conv = CausalConv3d(self.config["latent_channels"], self.config["vq_embed_dim"], 1)
        self.post_quant_conv = CausalConv3d(self.config["vq_embed_dim"], self.config["latent_channels"], 1)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Whole clip at once (the reference's sample_frames tiling would re-start the causal clip mid-way)."""
        with torch.no_grad():
            return fsq.quantize(self.quant_conv(self.encoder(self.as_pixels(pixels))))

    def decode_whole(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            codes = fsq.dequantize(self.as_latent_ids(ids), dtype=self.dtype)
            return self.decoder(self.post_quant_conv(codes))

    def code_table(self) -> torch.Tensor:
        return fsq.code_table()

    def decode_bytes(self, batch: int, latent_frames: int, height: int, width: int) -> int:
        dims = self.config["block_out_channels"]
        scale = self.spatial_stride // self.config["patch_size"]  # decoder grid before the inverse Haar
        widest = max(dims) * latent_frames * height * width * scale * scale
        attention = latent_frames * (height * width) ** 2  # spatial scores if SDPA falls back to the math path
        element = torch.finfo(self.dtype).bits // 8
        return int(batch * element * (6 * widest + attention))
