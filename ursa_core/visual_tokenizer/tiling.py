"""The interface both visual tokenizers share, and decoding that fits in memory.

`decode_fitting` splits a latent clip into temporal chunks and/or spatial tiles when a whole decode would not fit,
and blends the pieces back together. Chunks of the causal Cosmos tokenizer start `overlap` latents early: the
decoder treats the first latent of any call as the start of a clip (replicate-padded causal convs), so the frames
of those context latents are decoded worse; the first output frame of a later chunk is dropped and the rest of the
context frames are cross-faded linearly with the previous chunk. Spatial tiles overlap by `overlap` latents and are
cross-faded linearly too. Neither is exact: the mid-block attention sees the whole clip/frame in a whole decode.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..errors import InputError
from .geometry import VisualGeometry

ProgressCallback = Optional[Callable[[int, int], None]]
_OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)
MEMORY_HEADROOM = 0.8  # fraction of the free device memory a decode may plan to use
MIN_TILE = 4  # latents; smaller tiles are mostly border


class VisualTokenizer(nn.Module):
    """What the sampler and the nodes rely on, whichever tokenizer is loaded (see CosmosFSQTokenizer, IBQTokenizer)."""

    kind: str = ""
    temporal_stride: int = 1
    spatial_stride: int = 8
    codebook_size: int = 0
    max_frames: Optional[int] = None  # None: any 1 + temporal_stride * k

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @device.setter
    def device(self, value) -> None:
        # ComfyUI's ModelPatcher assigns `model.device` after moving weights; ours is always read from the weights.
        pass

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T, h, w) of the ids for a clip, or an InputError naming the bad value and the rule."""
        return self.geometry.latent_shape(frames, height, width)

    @property
    def geometry(self) -> VisualGeometry:
        return VisualGeometry(self.temporal_stride, self.spatial_stride, image_only=self.max_frames == 1)

    def frames_for_latents(self, latent_frames: int) -> int:
        """Pixel frames decoded from T latent frames (the inverse of latent_shape's rule)."""
        return self.geometry.pixel_frames(latent_frames)

    def as_latent_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Accept [B, T, h, w] or [B, h, w] (one latent frame); return int64 [B, T, h, w]."""
        if ids.dim() == 3:
            ids = ids.unsqueeze(1)
        if ids.dim() != 4:
            raise InputError(f"ids shape {tuple(ids.shape)}: expected [batch, T, h, w]")
        if ids.is_floating_point():
            raise InputError(f"ids dtype {ids.dtype}: expected an integer tensor")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise InputError(f"ids range [{int(ids.min())}, {int(ids.max())}]: must be in [0, {self.codebook_size})")
        return ids.to(device=self.device, dtype=torch.int64)

    def as_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Accept [B, 3, F, H, W] or [B, 3, H, W] in [-1, 1], check the size rules, move to the module."""
        if pixels.dim() == 4:
            pixels = pixels.unsqueeze(2)
        if pixels.dim() != 5:
            raise InputError(f"pixels shape {tuple(pixels.shape)}: expected [batch, channels, frames, height, width]")
        self.latent_shape(*pixels.shape[2:])
        return pixels.to(device=self.device, dtype=self.dtype)

    def decode(self, ids: torch.Tensor, callback: ProgressCallback = None, **fit_options) -> torch.Tensor:
        """ids [B, T, h, w] -> pixels [B, 3, frames_for_latents(T), H, W] in [-1, 1], chunked when needed."""
        return decode_fitting(self, ids, callback=callback, **fit_options)

    # Implemented by each tokenizer.
    def decode_whole(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_bytes(self, batch: int, latent_frames: int, height: int, width: int) -> int:
        """Rough peak activation bytes of decode_whole for a latent block of that size."""
        raise NotImplementedError


def _ramp_weights(length: int, skip_in: int, ramp_in: int, ramp_out: int) -> torch.Tensor:
    """1-D blend weights: 0 for skip_in samples, rising over ramp_in, 1, then falling over the last ramp_out.

    Two neighbours whose ramps cover the same samples sum to exactly 1 there (i/(n+1) + (n+1-i)/(n+1)).
    """
    weights = torch.ones(length, dtype=torch.float32)
    weights[:skip_in] = 0
    if ramp_in > 0:
        weights[skip_in:skip_in + ramp_in] = torch.arange(1, ramp_in + 1) / (ramp_in + 1)
    if ramp_out > 0:
        weights[length - ramp_out:] = torch.minimum(weights[length - ramp_out:],
                                                    torch.arange(ramp_out, 0, -1) / (ramp_out + 1))
    return weights


def plan_temporal_chunks(latent_frames: int, per_call: int, context: int) -> list[tuple[int, int, int]]:
    """(first decoded latent, first kept latent, end) per chunk; each call decodes at most per_call latents."""
    if per_call >= latent_frames:
        return [(0, 0, latent_frames)]
    chunks, start = [], 0
    while start < latent_frames:
        first = max(0, start - context)
        end = min(latent_frames, first + per_call)
        chunks.append((first, start, end))
        start = end
    return chunks


def plan_tiles(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Evenly spread (start, end) windows of `tile` latents covering [0, size), neighbours overlapping >= overlap."""
    if tile >= size:
        return [(0, size)]
    count = -(-(size - overlap) // (tile - overlap))
    starts = [round(i * (size - tile) / (count - 1)) for i in range(count)]
    return [(s, s + tile) for s in starts]


def _free_device_bytes(device: torch.device) -> Optional[int]:
    """Bytes a decode may still allocate on a CUDA device (None elsewhere: no reliable number)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    # Memory the caching allocator holds but does not use is free for torch too.
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def _min_per_call(tokenizer: VisualTokenizer) -> int:
    # A causal chunk after the first needs at least one context latent before the latents it keeps.
    return 2 if tokenizer.temporal_stride > 1 else 1


def choose_plan(tokenizer: VisualTokenizer, shape: Sequence[int], overlap: int,
                budget_bytes: Optional[float]) -> tuple[int, Optional[int]]:
    """(latents per decode call, spatial tile in latents or None) so that the memory estimate fits the budget."""
    batch, frames, height, width = shape
    if budget_bytes is None or tokenizer.decode_bytes(batch, frames, height, width) <= budget_bytes:
        return frames, None
    smallest = min(frames, _min_per_call(tokenizer))
    for per_call in range(frames - 1, smallest - 1, -1):
        if tokenizer.decode_bytes(batch, per_call, height, width) <= budget_bytes:
            return per_call, None
    # Even the shortest chunk is too big at full size: tile space as well, with a short chunk.
    per_call = min(frames, max(smallest, 2 * overlap))
    for tile in range(max(height, width) - 1, MIN_TILE - 1, -1):
        if tokenizer.decode_bytes(batch, per_call, min(tile, height), min(tile, width)) <= budget_bytes:
            return per_call, tile
    return smallest, MIN_TILE


def _shrink_plan(tokenizer: VisualTokenizer, shape: Sequence[int], per_call: int,
                 tile: Optional[int]) -> Optional[tuple[int, Optional[int]]]:
    """The next smaller plan after an out-of-memory error, or None when nothing smaller is possible."""
    _, _, height, width = shape
    smallest = min(shape[1], _min_per_call(tokenizer))
    if tile is None and per_call > smallest:
        return max(smallest, per_call // 2), None
    current = tile if tile is not None else max(height, width)
    if current > MIN_TILE:
        return per_call, max(MIN_TILE, current // 2)
    return None


def _decode_tiled_space(tokenizer: VisualTokenizer, ids: torch.Tensor, tile: Optional[int], overlap: int,
                        step: Callable[[], None]) -> torch.Tensor:
    """Decode one temporal chunk [B, t, h, w], in overlapping spatial tiles when tile is set."""
    _, _, height, width = ids.shape
    if tile is None or tile >= max(height, width):
        pixels = tokenizer.decode_whole(ids)
        step()
        return pixels
    ss, ov = tokenizer.spatial_stride, min(overlap, tile // 2)
    rows, cols = plan_tiles(height, tile, ov), plan_tiles(width, tile, ov)
    out = weight_sum = None
    for i, (y0, y1) in enumerate(rows):
        w_rows = _axis_weights(rows, i, ss)
        for j, (x0, x1) in enumerate(cols):
            piece = tokenizer.decode_whole(ids[:, :, y0:y1, x0:x1]).float()
            if out is None:
                out = piece.new_zeros(piece.shape[:3] + (height * ss, width * ss))
                weight_sum = piece.new_zeros(height * ss, width * ss)
            weights = (w_rows[:, None] * _axis_weights(cols, j, ss)[None, :]).to(piece.device)
            out[..., y0 * ss:y1 * ss, x0 * ss:x1 * ss] += piece * weights
            weight_sum[y0 * ss:y1 * ss, x0 * ss:x1 * ss] += weights
            step()
    return out / weight_sum


def _axis_weights(spans: list[tuple[int, int]], index: int, scale: int) -> torch.Tensor:
    start, end = spans[index]
    ramp_in = (spans[index - 1][1] - start) * scale if index > 0 else 0
    ramp_out = (end - spans[index + 1][0]) * scale if index + 1 < len(spans) else 0
    return _ramp_weights((end - start) * scale, 0, ramp_in, ramp_out)


def _temporal_weights(chunks: list[tuple[int, int, int]], index: int, stride: int) -> torch.Tensor:
    """Per-output-frame weights of one chunk; output frame j of a chunk starting at latent a is frame stride*a + j."""
    def context_ramp(chunk_index: int) -> int:
        first, start, _ = chunks[chunk_index]
        return max(0, stride * (start - first) - stride) if chunk_index > 0 else 0

    first, _, end = chunks[index]
    length = stride * (end - first) - (stride - 1)
    # A later causal chunk's first frame is decoded with no past at all: drop it, blend the other context frames.
    skip = 1 if index > 0 and stride > 1 else 0
    ramp_out = context_ramp(index + 1) if index + 1 < len(chunks) else 0
    return _ramp_weights(length, skip, context_ramp(index), ramp_out)


def _decode_with_plan(tokenizer: VisualTokenizer, ids: torch.Tensor, per_call: int, tile: Optional[int],
                      overlap: int, callback: ProgressCallback) -> torch.Tensor:
    batch, frames, height, width = ids.shape
    stride = tokenizer.temporal_stride
    context = 0 if stride == 1 else max(1, min(overlap, per_call // 2))
    chunks = plan_temporal_chunks(frames, per_call, context)
    tiles_per_chunk = 1
    if tile is not None and tile < max(height, width):
        ov = min(overlap, tile // 2)
        tiles_per_chunk = len(plan_tiles(height, tile, ov)) * len(plan_tiles(width, tile, ov))
    total, done = len(chunks) * tiles_per_chunk, [0]

    def step() -> None:
        done[0] += 1
        if callback is not None:
            callback(done[0], total)  # an exception here (user cancel) propagates and stops decoding

    if len(chunks) == 1:
        return _decode_tiled_space(tokenizer, ids, tile, overlap, step).to(tokenizer.dtype)
    out = weight_sum = None
    for index, (first, _, end) in enumerate(chunks):
        piece = _decode_tiled_space(tokenizer, ids[:, first:end], tile, overlap, step).float()
        if out is None:
            total_frames = tokenizer.frames_for_latents(frames)
            out = piece.new_zeros(piece.shape[:2] + (total_frames,) + piece.shape[3:])
            weight_sum = piece.new_zeros(total_frames)
        weights = _temporal_weights(chunks, index, stride).to(piece.device)
        offset = stride * first
        out[:, :, offset:offset + piece.shape[2]] += piece * weights[:, None, None]
        weight_sum[offset:offset + piece.shape[2]] += weights
    return (out / weight_sum[:, None, None]).to(tokenizer.dtype)


def decode_fitting(tokenizer: VisualTokenizer, ids: torch.Tensor, max_latent_frames: Optional[int] = None,
                   tile: Optional[int] = None, overlap: int = 2, callback: ProgressCallback = None) -> torch.Tensor:
    """Decode ids [B, T, h, w] to pixels, whole when it fits, else in chunks/tiles blended together.

    max_latent_frames: latents per decoder call, context included (None: chosen from free CUDA memory; whole
    clip on CPU). tile: spatial tile size in latents (None: chosen likewise). overlap: latents shared by
    neighbouring chunks/tiles. callback(done, total) runs after every decoder call; if it raises, decoding stops
    and the exception propagates. On a CUDA out-of-memory error the plan is halved and decoding restarts.
    """
    ids = tokenizer.as_latent_ids(ids)
    if overlap < 0:
        raise InputError(f"overlap={overlap}: must be >= 0")
    shape = tuple(ids.shape)
    per_call, chosen_tile = choose_plan(tokenizer, shape, overlap, _budget(tokenizer.device))
    if max_latent_frames is not None:
        if max_latent_frames < _min_per_call(tokenizer):
            raise InputError(f"max_latent_frames={max_latent_frames}: must be >= {_min_per_call(tokenizer)}")
        per_call = min(max_latent_frames, shape[1])
    if tile is not None:
        if tile < 1:
            raise InputError(f"tile={tile}: must be >= 1 latent")
        chosen_tile = tile
    while True:
        try:
            with torch.no_grad():
                return _decode_with_plan(tokenizer, ids, per_call, chosen_tile, overlap, callback)
        except _OOM_ERRORS:
            smaller = _shrink_plan(tokenizer, shape, per_call, chosen_tile)
            if smaller is None:
                raise
        # Outside the except block, so the failed attempt's tensors (held by the traceback) are already freed.
        if tokenizer.device.type == "cuda":
            torch.cuda.empty_cache()
        per_call, chosen_tile = smaller


def _budget(device: torch.device) -> Optional[float]:
    free = _free_device_bytes(device)
    return None if free is None else free * MEMORY_HEADROOM
