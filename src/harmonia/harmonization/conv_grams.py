"""Exact per-sample Gram contributions of convolutions (``nn.Conv1d/2d/3d``).

A conv is a linear layer over its input's patches, so its per-sample weight gradient is each
sample's output gradients times its patches (im2col). The patches of a few samples at a time
are copied from a strided view of the padded input (`COLUMNS_BUDGET`) and multiplied with all
losses' output gradients at once; channels-last inputs take them position-major. The gradients
are materialized (`layer_grams.MATERIALIZE_BUDGET`) and offered to a `layer_grams.Kept`, so the
realigned gradient is their weighted sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv1d_weight, conv2d_weight, conv3d_weight

from harmonia.harmonization import layer_grams
from harmonia.harmonization.layer_grams import (
    Kept,
    Traced,
    _cat,
    _forward_is,
    _input,
    _summed,
    _trainable_bias,
    params_gram,
)


def covered_conv(module: nn.Module) -> bool:
    """A plain ``nn.Conv1d`` / ``Conv2d`` / ``Conv3d``: any kernel, stride, dilation, padding, groups."""
    return any(_forward_is(module, cls) for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d))


_CONV_WEIGHT_GRAD = {1: conv1d_weight, 2: conv2d_weight, 3: conv3d_weight}
COLUMNS_BUDGET = 1 << 21
"""Input-patch entries (``samples x C k x positions``) unfolded at once for per-sample conv
gradients; about 8 MiB in float32, so a chunk's patches stay in cache for its products."""


def padded(module: nn.Conv1d | nn.Conv2d | nn.Conv3d, x: Tensor) -> Tensor:
    """A conv's input with its padding (any mode, ``same`` included) applied, as its forward does."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(x, module._reversed_padding_repeated_twice, mode=mode)


def patches(
    module: nn.Conv1d | nn.Conv2d | nn.Conv3d,
    x: Tensor,
    grid: Sequence[int],
    buffer: Tensor | None = None,
) -> Tensor:
    """The padded input's patches ``[b, groups, C / groups * kernel, positions]`` (im2col).

    A strided view walks kernel offsets (dilation) and output positions (stride) of any 1D, 2D
    or 3D conv; it is copied into rows in the weight's ``[C / groups, *kernel]`` order, into the
    front of ``buffer`` when one is given (`_reused`).
    """
    x = padded(module, x)
    step = x.stride()
    dims = range(len(module.kernel_size))
    view = x.as_strided(
        (*x.shape[:2], *module.kernel_size, *grid),
        (
            *step[:2],
            *(step[2 + i] * module.dilation[i] for i in dims),
            *(step[2 + i] * module.stride[i] for i in dims),
        ),
    )
    return _copied(view, buffer).view(x.shape[0], module.groups, -1, math.prod(grid))


def _reused(x: Tensor, samples: int, entries: int) -> Tensor:
    """One flat buffer for ``samples`` samples' patches, filled again by every chunk.

    A fresh patch tensor per chunk is several MiB, so the allocator maps new pages each time;
    the page faults cost more than the copy itself (profiled on the VATT stem).
    """
    return torch.empty(samples * entries, dtype=x.dtype, device=x.device)


def _copied(view: Tensor, buffer: Tensor | None) -> Tensor:
    """``view`` copied contiguous, into the front of ``buffer`` when one is given."""
    if buffer is None:
        return view.contiguous()
    return buffer[: view.numel()].view(view.shape).copy_(view)


def conv_weight_grads(
    module: nn.Conv1d | nn.Conv2d | nn.Conv3d, x: Tensor, d: Sequence[Tensor]
) -> Tensor:
    """Per-sample, per-loss weight gradients ``[b, M, weight entries]`` of a conv call.

    Per group, each sample's gradient is its output gradients ``[M O / groups, positions]``
    times its input patches (`patches`) transposed: one batched product for all losses, a
    few samples at a time (`COLUMNS_BUDGET`). This was about 2x faster on CPU than one grouped
    weight-gradient convolution with the samples folded into channels.
    """
    if module.groups == 1 and x.dim() > 3 and x.stride(1) == 1 and d[0].stride(1) == 1:
        return _channels_last_weight_grads(module, x, d)
    batch, tasks, groups = x.shape[0], len(d), module.groups
    grid = d[0].shape[2:]
    positions = math.prod(grid)
    rows = module.in_channels * math.prod(module.kernel_size) * positions
    chunk = max(1, COLUMNS_BUDGET // rows)
    buffer = _reused(x, min(chunk, batch), rows)
    out = x.new_empty(batch, tasks, module.weight.numel())
    for start in range(0, batch, chunk):
        cols = patches(module, x[start : start + chunk], grid, buffer)
        b = cols.shape[0]
        # [b, M, O, *grid] -> [b, groups, M O / groups, positions], rows in (loss, channel) order
        g = torch.stack([dk[start : start + chunk] for dk in d], 1)
        g = (
            g.reshape(b, tasks, groups, -1, positions)
            .transpose(1, 2)
            .reshape(b, groups, -1, positions)
        )
        weight = g @ cols.transpose(2, 3)  # [b, groups, M O / groups, C / groups * kernel]
        out[start : start + b].view(b, tasks, groups, -1).copy_(
            weight.reshape(b, groups, tasks, -1).transpose(1, 2)
        )
    return out


def _channels_last_weight_grads(
    module: nn.Conv1d | nn.Conv2d | nn.Conv3d, x: Tensor, d: Sequence[Tensor]
) -> Tensor:
    """`conv_weight_grads` for channels-last inputs and output gradients, one group.

    Patches are taken position-major (``[b, positions, kernel C]``, channels innermost as the
    input holds them) and each output gradient is read as ``[b, positions, O]`` without a copy.
    The product is formed as ``patches^T grad`` (``[kernel C, O]``): for a stem's few channels
    that shape ran about 1.4x faster on CPU than ``grad^T patches``.
    """
    batch, tasks = x.shape[0], len(d)
    grid, width = d[0].shape[2:], module.in_channels
    positions, taps = math.prod(grid), math.prod(module.kernel_size)
    chunk = max(1, COLUMNS_BUDGET // (width * taps * positions))
    buffer = _reused(x, min(chunk, batch), width * taps * positions)
    out = x.new_empty(batch, tasks, module.weight.numel())
    dims = range(len(module.kernel_size))
    for start in range(0, batch, chunk):
        x_part = padded(module, x[start : start + chunk])
        b, step = x_part.shape[0], x_part.stride()
        view = x_part.as_strided(
            (b, *grid, *module.kernel_size, width),
            (
                step[0],
                *(step[2 + i] * module.stride[i] for i in dims),
                *(step[2 + i] * module.dilation[i] for i in dims),
                step[1],
            ),
        )
        cols = _copied(view, buffer).view(b, positions, taps * width).transpose(1, 2)
        per_loss = [
            cols @ dk[start : start + chunk].movedim(1, -1).reshape(b, positions, -1) for dk in d
        ]  # [b, kernel C, O] each
        # -> [b, M, O, C, kernel]: the weight's own entry order
        weight = torch.stack(per_loss, 1).view(b, tasks, taps, width, -1)
        out[start : start + b].view(b, tasks, -1, width, taps).copy_(weight.permute(0, 1, 4, 3, 2))
    return out


def conv_gram(
    module: nn.Module, traced: list[Traced], dtype: torch.dtype, kept: Kept | None = None
) -> Tensor:
    """``nn.Conv1d/2d/3d`` (any kernel, stride, dilation, padding, groups): materialized per-sample
    weight gradients (`conv_weight_grads`), a chunk of samples at a time, and ``sum_p d_p``
    over output positions for the bias. Several calls of one module add their gradients; when
    one chunk holds the whole batch they are offered to ``kept``.
    """
    assert isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
    on_path = traced[0].grad
    batch, tasks = on_path[0].shape[0], len(on_path)
    chunk = max(1, layer_grams.MATERIALIZE_BUDGET // (tasks * module.weight.numel()))
    parts = []
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        flat: dict[Tensor, Tensor] = {}
        if module.weight.requires_grad:
            flat[module.weight] = _summed(
                [
                    conv_weight_grads(
                        module, _input(t.call)[rows].to(dtype), [g[rows].to(dtype) for g in t.grad]
                    )
                    for t in traced
                ]
            )
        if _trainable_bias(module):
            # per loss, so a channels-last gradient is reduced in place and not copied first
            flat[module.bias] = _summed(  # type: ignore[index]
                [
                    torch.stack([g[rows].to(dtype).flatten(2).sum(-1) for g in t.grad], 1)
                    for t in traced
                ]
            )
        parts.append(params_gram(flat))
    if kept is not None and chunk >= batch:
        kept.offer(module, {p: g.view(batch, tasks, *p.shape) for p, g in flat.items()})
    return _cat(parts, 0)
