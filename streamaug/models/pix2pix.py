"""pix2pix inpainter (Isola et al. 2017) as used by Xing et al. (2019, §2): context around a kept box.

A training pair is a real image ``y`` and a binary box mask ``m`` (1 inside the annotated pathology
box). The generator sees ``x = y ⊙ m`` (only the box) and its output is composited
``x̃ = x + G(x) ⊙ (1 − m)``: the box stays exactly as it was, only its surroundings are generated.
:func:`composite` is that formula (as ``torch.where``, so the box pixels are bit-equal), and
:func:`box_mask` turns ``x0 y0 x1 y1`` boxes into ``m``.

Networks follow the official pix2pix code: a U-Net generator (4x4 stride-2 convs, skip connections,
dropout 0.5 in the three decoder blocks after the bottleneck, ``tanh``) and a PatchGAN
discriminator (``dis_layers`` stride-2 4x4 convs, one stride-1, a 1-channel logit map; the paper's
70x70 PatchGAN at ``dis_layers=3``) that sees the input and an output image side by side. Two
choices differ from the defaults of that code, both for a stream that makes each candidate on its
own: instance norm instead of batch norm (a candidate's output does not depend on the other
candidates of its batch), and test-time dropout (pix2pix's only noise, what varies the context)
drawn from a seed per image (:meth:`UNetGenerator.noise`), so a candidate can be made again from its
seed on any device. With ``mask_input`` (default) the generator also sees ``m`` as a second channel,
so a dark pixel inside the box is not confused with the blanked outside; ``mask_input=False`` is
the paper's ``G(x)``.

Scaling: the public API takes and returns images in ``[0, 1]``; the networks work in ``[-1, 1]``.
Training (losses, optimizers) is :mod:`streamaug.train.inpainter`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from streamaug.models.registry import register_inpainter

__all__ = ["Pix2PixConfig", "Pix2Pix", "UNetGenerator", "PatchDiscriminator", "PRESETS", "pix2pix_preset",
           "box_mask", "composite"]


@dataclass
class Pix2PixConfig:
    """Hyper-parameters of the pix2pix inpainter and its training (defaults: Isola et al., Xing et al.).

    Attributes:
        image_size: side ``S`` of the square images (divisible by ``2 ** depth``); 256 in Xing et al.
        in_channels: image channels (1 for X-rays).
        ngf: generator base width; it doubles at each downsampling up to ``8 * ngf``.
        depth: stride-2 downsamplings of the U-Net (8 for 256 px: a 1x1 bottleneck).
        mask_input: give the generator the box mask as an extra input channel.
        n_dropout: decoder blocks after the bottleneck with dropout.
        dropout: their dropout probability.
        ndf: discriminator base width.
        dis_layers: stride-2 conv layers of the PatchGAN (3: the 70x70 PatchGAN).
        betas, lr: Adam settings of both optimizers (``(0.5, 0.999)``, 2e-4).
        l1_weight: weight ``lambda`` of the L1 term (100).
    """

    image_size: int = 256
    in_channels: int = 1
    ngf: int = 64  # the generator: pix2pix's unet_256 at the defaults
    depth: int = 8
    mask_input: bool = True
    n_dropout: int = 3
    dropout: float = 0.5
    ndf: int = 64  # the discriminator: the 70x70 PatchGAN
    dis_layers: int = 3
    betas: tuple[float, float] = (0.5, 0.999)  # the objective and the optimizers
    lr: float = 2e-4
    l1_weight: float = 100.0

    def __post_init__(self) -> None:
        if self.depth < 2 or self.image_size % (2**self.depth):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**depth (depth={self.depth} >= 2)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints and run configs)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Pix2PixConfig:
        """Inverse of :meth:`to_dict` (``betas`` may come back as a list); unknown keys raise ``TypeError``."""
        return cls(**{**d, "betas": tuple(d.get("betas", cls.betas))})


PRESETS: dict[str, dict[str, Any]] = {
    # Xing et al.: 256 x 256 images, pix2pix's unet_256 and 70x70 PatchGAN
    "paper": dict(image_size=256, ngf=64, depth=8, ndf=64, dis_layers=3),
    # tests and CPU runs: 64 x 64, a few hundred steps in minutes on 2 cores
    "tiny": dict(image_size=64, ngf=8, depth=5, ndf=8, dis_layers=2),
}


def pix2pix_preset(name: str, **overrides: Any) -> Pix2PixConfig:
    """A :class:`Pix2PixConfig` preset (``"paper"``, ``"tiny"``) with optional overrides.

    Examples:
        >>> pix2pix_preset("tiny").image_size, pix2pix_preset("paper", image_size=128, depth=7).ngf
        (64, 64)
    """
    if name not in PRESETS:
        raise KeyError(f"unknown pix2pix preset {name!r}; choose from {sorted(PRESETS)}")
    return Pix2PixConfig(**{**PRESETS[name], **overrides})


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The mask ``m`` of each box: pixels that the box ``x0 y0 x1 y1`` (end-exclusive) touches.

    A pixel ``[x, x + 1)`` belongs to the box when it overlaps ``[x0, x1)``, so an integer box gives
    exactly ``[..., y0:y1, x0:x1]`` and a fractional one (a box scaled to another image size) its
    enclosing whole pixels.

    Args:
        boxes: ``(K, 4)`` boxes in pixels (float or int).
        height: rows ``H`` of the mask.
        width: columns ``W`` of the mask.

    Returns:
        ``(K, 1, H, W)`` bool on the device of ``boxes``.

    Examples:
        >>> box_mask(torch.tensor([[1, 0, 3, 2]]), 3, 4)[0, 0].int()
        tensor([[0, 1, 1, 0],
                [0, 1, 1, 0],
                [0, 0, 0, 0]], dtype=torch.int32)
        >>> int(box_mask(torch.tensor([[0.5, 0.5, 1.2, 1.0]]), 3, 4).sum())
        2
    """
    b = boxes.reshape(-1, 4).to(torch.float64)
    ys = torch.arange(height, device=boxes.device, dtype=torch.float64)
    xs = torch.arange(width, device=boxes.device, dtype=torch.float64)
    rows = (ys[None] < b[:, 3:4]) & (ys[None] + 1 > b[:, 1:2])  # (K, H)
    cols = (xs[None] < b[:, 2:3]) & (xs[None] + 1 > b[:, 0:1])  # (K, W)
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def composite(y: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x̃ = y ⊙ m + G(x) ⊙ (1 − m)`` (Xing et al. §2.2): ``y`` inside the mask, bit for bit.

    Args:
        y: ``(B, C, H, W)`` the real images.
        generated: ``(B, C, H, W)`` the generator's images.
        mask: ``(B, 1, H, W)`` bool (or 0/1) box masks.

    Returns:
        ``(B, C, H, W)`` in the dtype of ``y``.

    Examples:
        >>> y, g = torch.rand(1, 1, 4, 4), torch.full((1, 1, 4, 4), float("nan"))
        >>> m = box_mask(torch.tensor([[0, 0, 2, 2]]), 4, 4)
        >>> out = composite(y, g, m)
        >>> torch.equal(out[m], y[m]), bool(out[~m].isnan().all())
        (True, True)
    """
    return torch.where(mask.bool(), y, generated.to(y.dtype))


def _init_weights(module: nn.Module) -> None:
    """pix2pix init: conv weights N(0, 0.02), norm scales N(1, 0.02), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.InstanceNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class UNetGenerator(nn.Module):
    """pix2pix U-Net: ``(B, C_in, S, S)`` in ``[-1, 1]`` -> ``(B, C, S, S)`` in ``[-1, 1]``.

    Encoder level ``i`` (``0 .. depth - 1``) halves the size to width ``w_i = ngf * min(2**i, 8)``
    (leaky ReLU, conv, instance norm; none on the first and the bottleneck). Decoder level ``i``
    (ReLU, transposed conv, instance norm) doubles it back and is concatenated with encoder level
    ``i - 1``; level 0 ends in ``tanh``. Dropout follows the ``n_dropout`` decoder levels after the
    bottleneck.

    Args:
        config: a :class:`Pix2PixConfig`.
    """

    def __init__(self, config: Pix2PixConfig) -> None:
        super().__init__()
        c = config
        self.widths = [c.ngf * min(2**i, 8) for i in range(c.depth)]
        self.p = c.dropout
        # decoder levels with dropout, in the order the forward pass meets them (bottleneck first)
        self.dropout_levels = [i for i in range(c.depth - 2, c.depth - 2 - c.n_dropout, -1) if i >= 1]
        cin = c.in_channels + int(c.mask_input)
        self.downs = nn.ModuleList()
        for i, w in enumerate(self.widths):
            prev = cin if i == 0 else self.widths[i - 1]
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(prev, w, 4, 2, 1))
            if 0 < i < c.depth - 1:
                layers.append(nn.InstanceNorm2d(w, affine=True))
            self.downs.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList()  # bottleneck level first
        for i in range(c.depth - 1, -1, -1):
            width_in = self.widths[i] * (1 if i == c.depth - 1 else 2)
            out = c.in_channels if i == 0 else self.widths[i - 1]
            layers = [nn.ReLU(), nn.ConvTranspose2d(width_in, out, 4, 2, 1)]
            layers.append(nn.Tanh() if i == 0 else nn.InstanceNorm2d(out, affine=True))
            self.ups.append(nn.Sequential(*layers))
        _init_weights(self)

    def noise(self, seeds: torch.Tensor, size: int) -> list[torch.Tensor]:
        """Dropout masks of images of side ``size``, one seeded CPU generator per image.

        Args:
            seeds: ``(K,)`` integer seeds.
            size: image side ``S``.

        Returns:
            One ``(K, w, S / 2**i, S / 2**i)`` float32 CPU tensor per dropout level (kept units
            scaled by ``1 / (1 - p)``, dropped ones 0): the same on every device for the same seeds.
        """
        shapes = [(self.widths[i - 1], size >> i, size >> i) for i in self.dropout_levels]
        per_image = []
        for seed in seeds.reshape(-1).tolist():
            g = torch.Generator().manual_seed(int(seed))
            per_image.append([torch.rand(shape, generator=g) >= self.p for shape in shapes])
        return [torch.stack([masks[level] for masks in per_image]).float() / (1 - self.p)
                for level in range(len(shapes))]

    def forward(self, x: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Run the U-Net; dropout uses ``noise`` (from :meth:`noise`) when given, else torch's RNG
        in training mode and none in eval mode."""
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        h = skips.pop()
        for n, up in enumerate(self.ups):
            level = len(self.ups) - 1 - n
            h = up(h)
            if level in self.dropout_levels:
                if noise is not None:
                    h = h * noise[self.dropout_levels.index(level)].to(h.device, h.dtype)
                else:
                    h = nn.functional.dropout(h, self.p, self.training)
            if level > 0:
                h = torch.cat([h, skips.pop()], 1)
        return h


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN: ``(input, image)`` -> ``(B, 1, h, w)`` real/fake logits per patch.

    ``dis_layers`` 4x4 stride-2 convs (the first without norm), a 4x4 stride-1 conv at up to
    ``8 * ndf`` channels, and a 4x4 stride-1 conv to one channel.

    Args:
        config: a :class:`Pix2PixConfig`.
    """

    def __init__(self, config: Pix2PixConfig) -> None:
        super().__init__()
        c = config
        cin = 2 * c.in_channels + int(c.mask_input)
        layers: list[nn.Module] = [nn.Conv2d(cin, c.ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = c.ndf
        for i in range(1, c.dis_layers + 1):
            out = c.ndf * min(2**i, 8)
            layers += [nn.Conv2d(width, out, 4, 2 if i < c.dis_layers else 1, 1),
                       nn.InstanceNorm2d(out, affine=True), nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([condition, image], 1))


@register_inpainter("pix2pix")
class Pix2Pix(nn.Module):
    """The inpainter: generator and discriminator in one module (one ``state_dict``).

    Args:
        config: a :class:`Pix2PixConfig` (see :func:`pix2pix_preset`).

    Examples:
        >>> y, mask = torch.rand(2, 1, 32, 32), box_mask(torch.tensor([[8, 8, 20, 16], [0, 0, 32, 4]]), 32, 32)
        >>> out = Pix2Pix(pix2pix_preset("tiny", image_size=32, depth=4)).eval().inpaint(y, mask, torch.tensor([1, 2]))
        >>> out.shape, torch.equal(out[mask], y[mask])
        (torch.Size([2, 1, 32, 32]), True)
    """

    config_cls = Pix2PixConfig

    def __init__(self, config: Pix2PixConfig) -> None:
        super().__init__()
        self.config, self.image_size = config, config.image_size
        self.generator, self.discriminator = UNetGenerator(config), PatchDiscriminator(config)

    def network_input(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x = y ⊙ m`` in ``[-1, 1]`` (0 outside the box), with ``m`` as a channel if ``mask_input``.

        Args:
            y: ``(B, C, S, S)`` images in ``[0, 1]``.
            mask: ``(B, 1, S, S)`` box masks.

        Raises:
            ValueError: the images are not ``(B, C, S, S)`` or the mask does not fit them.
        """
        c, s = self.config.in_channels, self.image_size
        if y.dim() != 4 or y.shape[1] != c or y.shape[-2:] != (s, s) or mask.shape != (len(y), 1, s, s):
            raise ValueError(f"expected images (B, {c}, {s}, {s}) and masks (B, 1, {s}, {s}), got "
                             f"{tuple(y.shape)} and {tuple(mask.shape)}")
        m = mask.to(y.dtype)
        x = (y * 2 - 1) * m
        return torch.cat([x, m], 1) if self.config.mask_input else x

    def generate(self, y: torch.Tensor, mask: torch.Tensor, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """``G(x)`` in ``[0, 1]``: ``(B, C, S, S)`` images and masks -> ``(B, C, S, S)``.

        ``seeds`` ``(B,)``: test-time dropout drawn from one seed per image (pix2pix's noise); None:
        no dropout in eval mode (one fixed output per input).
        """
        noise = None if seeds is None else self.generator.noise(seeds, self.image_size)
        return (self.generator(self.network_input(y, mask), noise) + 1) / 2

    def inpaint(self, y: torch.Tensor, mask: torch.Tensor, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """The composite ``x̃``: ``y`` inside the masks, :meth:`generate` outside; ``[0, 1]``."""
        return composite(y, self.generate(y, mask, seeds).clamp(0, 1), mask)

    def forward(self, y: torch.Tensor, mask: torch.Tensor, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`inpaint`."""
        return self.inpaint(y, mask, seeds)
