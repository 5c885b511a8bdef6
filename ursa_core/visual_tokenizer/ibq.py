"""IBQ image tokenizer (`AutoencoderVQ`, URSA IBQ1024, Emu3.5 vision tokenizer; docs/ARCHITECTURE.md,
"Visual tokenizers").

An LDM-style 2-D conv autoencoder. Module attribute names mirror the official state-dict keys. Ids are the
codebook rows with the largest dot product with the latent vector (IBQ), not the L2-nearest rows.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .tiling import VisualTokenizer

IBQ_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
    "latent_channels": 16, "norm_num_groups": 32, "sample_size": 1024, "num_vq_embeddings": 16384,
    "vq_embed_dim": 8, "attn_down_block": False, "attn_up_block": False, "temporal_stride": 1,
    "spatial_stride": 16, "decoder_dtype": None, "_quantizer_name": "VQuantizer",
}
NORM_GROUPS = 32  # the reference hard-codes 32 groups whatever config.norm_num_groups says
NORM_EPS = 1e-6


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS)


class Attention(nn.Module):
    """Single-head self-attention over all pixels; the caller adds the residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.group_norm = group_norm(channels)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        seq = self.group_norm(x).flatten(2).transpose(1, 2)
        attended = F.scaled_dot_product_attention(self.to_q(seq), self.to_k(seq), self.to_v(seq))
        return self.to_out[0](attended).transpose(1, 2).reshape(batch, channels, height, width)


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        hidden = self.conv1(F.silu(self.norm1(x)))
        return self.conv2(F.silu(self.norm2(hidden))) + skip


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then a stride-2 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResStage(nn.Module):
    """ResBlocks, each optionally followed by a residual attention, then an optional resize."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, down: bool = False, up: bool = False):
        super().__init__()
        self.resnets = nn.ModuleList(ResBlock(in_channels if i == 0 else out_channels, out_channels)
                                     for i in range(depth))
        self.attentions = nn.ModuleList()  # filled by attn_down_block / attn_up_block
        self.downsamplers = nn.ModuleList([Downsample(out_channels)] if down else [])
        self.upsamplers = nn.ModuleList([Upsample(out_channels)] if up else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x)
            if i < len(self.attentions):
                x = x + self.attentions[i](x)
        for resize in [*self.downsamplers, *self.upsamplers]:
            x = resize(x)
        return x


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(channels, channels), ResBlock(channels, channels)])
        self.attentions = nn.ModuleList([Attention(channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        return self.resnets[1](x + self.attentions[0](x))


class IBQEncoder(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        dims, depth = list(config["block_out_channels"]), config["layers_per_block"]
        self.conv_in = nn.Conv2d(config["in_channels"], dims[0], 3, 1, 1)
        self.down_blocks = nn.ModuleList(ResStage(dims[max(i - 1, 0)], dims[i], depth, down=i < len(dims) - 1)
                                         for i in range(len(dims)))
        self.mid_block = MidBlock(dims[-1])
        self.conv_norm_out = group_norm(dims[-1])
        self.conv_out = nn.Conv2d(dims[-1], config["latent_channels"], 3, 1, 1)
        if config["attn_down_block"]:
            self.down_blocks[-1].attentions.extend(Attention(dims[-1]) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for stage in self.down_blocks:
            x = stage(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class IBQDecoder(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        dims, depth = list(config["block_out_channels"])[::-1], config["layers_per_block"]
        self.conv_in = nn.Conv2d(config["latent_channels"], dims[0], 3, 1, 1)
        self.mid_block = MidBlock(dims[0])
        self.up_blocks = nn.ModuleList(ResStage(dims[max(i - 1, 0)], dims[i], depth + 1, up=i < len(dims) - 1)
                                       for i in range(len(dims)))
        self.conv_norm_out = group_norm(dims[-1])
        self.conv_out = nn.Conv2d(dims[-1], config["out_channels"], 3, 1, 1)
        if config["attn_up_block"]:
            # The reference attaches these to the first up stage with the last (widest) level's width.
            self.up_blocks[0].attentions.extend(Attention(config["block_out_channels"][-1]) for _ in range(depth + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x))
        for stage in self.up_blocks:
            x = stage(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Quantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)


def ibq_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the known keys of vae/config.json (unknown keys are ignored)."""
    config = dict(IBQ_DEFAULTS)
    config.update({k: v for k, v in raw.items() if k in IBQ_DEFAULTS})
    config["block_out_channels"] = tuple(config["block_out_channels"])
    stride = 2 ** (len(config["block_out_channels"]) - 1)
    if config["spatial_stride"] != stride:
        # The architecture decides the stride; the reference's own defaults (4 levels, stride 16) disagree.
        warnings.warn(f"vae config: spatial_stride={config['spatial_stride']} but "
                      f"{len(config['block_out_channels'])} block_out_channels give {stride}; using {stride}")
        config["spatial_stride"] = stride
    if config["_quantizer_name"] not in (None, "VQuantizer"):
        raise CheckpointError(f"vae config: _quantizer_name={config['_quantizer_name']!r} is not supported "
                              "(IBQ tokenizers use 'VQuantizer')")
    return config


class IBQTokenizer(VisualTokenizer):
    """Image <-> IBQ ids: [B, 3, 1, H, W] (or [B, 3, H, W]) in [-1, 1] <-> int64 [B, 1, H/16, W/16]."""

    kind = "ibq"
    max_frames = 1

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__()
        self.config = ibq_config(config or {})
        self.temporal_stride = 1
        self.spatial_stride = self.config["spatial_stride"]
        self.codebook_size = self.config["num_vq_embeddings"]
        self.encoder = IBQEncoder(self.config)
        self.decoder = IBQDecoder(self.config)
        self.quant_conv = nn.Conv2d(self.config["latent_channels"], self.config["vq_embed_dim"], 1)
        self.post_quant_conv = nn.Conv2d(self.config["vq_embed_dim"], self.config["latent_channels"], 1)
        self.quantizer = Quantizer(self.codebook_size, self.config["vq_embed_dim"])

    def to(self, *args, **kwargs):
        """As nn.Module.to, but a config decoder_dtype keeps the decoder in that dtype (as the reference)."""
        super().to(*args, **kwargs)
        if self.config["decoder_dtype"]:
            self.decoder.to(dtype=getattr(torch, self.config["decoder_dtype"]))
        return self

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            images = self.as_pixels(pixels)[:, :, 0]
            latents = self.quant_conv(self.encoder(images))
            scores = torch.einsum("bdhw,kd->bhwk", latents, self.quantizer.embedding.weight)
            return scores.argmax(-1).unsqueeze(1)

    def decode_whole(self, ids: torch.Tensor) -> torch.Tensor:
        """Every latent frame is an independent image: [B, T, h, w] -> [B, 3, T, H, W]."""
        with torch.no_grad():
            ids = self.as_latent_ids(ids)
            batch, frames = ids.shape[:2]
            codes = self.quantizer.embedding(ids.flatten(0, 1)).permute(0, 3, 1, 2)
            latents = self.post_quant_conv(codes)
            images = self.decoder(latents.to(self.decoder.conv_in.weight.dtype)).to(self.dtype)
            return images.unflatten(0, (batch, frames)).transpose(1, 2)

    def code_table(self) -> torch.Tensor:
        return self.quantizer.embedding.weight.detach()

    def decode_bytes(self, batch: int, latent_frames: int, height: int, width: int) -> int:
        dims = list(self.config["block_out_channels"])[::-1]
        # Stage i works at 2**i times the latent grid, and its upsampler doubles that with the same width.
        widest = max(d * 4 ** min(i + 1, len(dims) - 1) for i, d in enumerate(dims)) * height * width
        attention = (height * width) ** 2
        element = torch.finfo(self.dtype).bits // 8
        return int(batch * latent_frames * element * (6 * widest + attention))
