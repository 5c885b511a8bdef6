"""IMAGE batches (ComfyUI layout [F, H, W, 3] in 0..1) <-> visual tokens, through a loaded visual tokenizer."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..errors import InputError
from ..files.media import fit_frames, from_model_pixels, to_model_pixels


@torch.no_grad()
def encode_images(tokenizer, images: torch.Tensor, width: int, height: int, resize_mode: str = "crop") -> torch.Tensor:
    """Frames of any size (alpha dropped) -> tokens [1, T, h, w] on the CPU; frame count and size are checked
    against the tokenizer's rules with the allowed values in the message."""
    frames = fit_frames(images, width, height, resize_mode)
    tokenizer.latent_shape(frames.shape[0], height, width)
    return tokenizer.encode(to_model_pixels(frames).to(tokenizer.device, tokenizer.dtype)).cpu()


@torch.no_grad()
def decode_images(tokenizer, tokens: torch.Tensor, callback: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Tokens [B, T, h, w] -> IMAGE [B*F, H, W, 3] float32 on the CPU; `callback(done, total)` per decoded chunk."""
    if int(tokens.max()) >= tokenizer.codebook_size or int(tokens.min()) < 0:
        raise InputError(f"tokens contain codes in [{int(tokens.min())}, {int(tokens.max())}] but this tokenizer has "
                         f"{tokenizer.codebook_size} codes: were they made with another model?")
    return from_model_pixels(tokenizer.decode(tokens.to(tokenizer.device), callback=callback))


def decode_tokens(model, tokens: torch.Tensor, callback: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """An URSAModel's tokens [B, T, h, w] -> IMAGE [B*F, H, W, 3] float32 CPU."""
    if model.visual_tokenizer is None:
        raise InputError(f"{model.folder}: this checkpoint has no vae/ folder, so tokens cannot be decoded")
    return decode_images(model.visual_tokenizer, tokens, callback)
