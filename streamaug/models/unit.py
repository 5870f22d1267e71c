"""UNIT translator networks (Liu et al. 2017) as used by Gupta et al. (MIDL 2019, §3.1, §4.2).

Two VAE encoder/generator pairs, ``h`` (normal, "healthy") and ``l`` (lesion), with a shared latent
space implemented by weight sharing: the last ``n_shared`` residual blocks of both encoders are one
module, and so are the first ``n_shared`` residual blocks of both generators::

    x_h -> E_h private -> E shared -> z -> G shared -> G_l private -> x_{h->l}
    x_l -> E_l private ----^                   ^------ G_h private -> x_{l->h}

Architecture follows the official UNIT code: encoder = 7x7 conv, ``n_downsample`` 4x4 stride-2
convs, residual blocks (instance norm, ReLU, reflect padding); generator mirrors it with residual
blocks, nearest x2 upsampling + 5x5 conv (layer norm), 7x7 conv and ``tanh``. The VAE is UNIT's: the
latent is the encoder's mean ``mu``; training adds unit-variance noise ``z = mu + N(0, I)`` and the KL
term reduces to ``mean(mu^2)``; translation at inference uses ``mu``.

Scaling: the public API takes and returns patches in ``[0, 1]``. Internally the networks work in
``[-1, 1]`` (``x * 2 - 1`` in, ``(tanh + 1) / 2`` out) like the official code, so the loss weights
keep their meaning. Discriminators (multi-scale LSGAN) live here too; losses and the optimizer step
are in :mod:`streamaug.train.unit_losses`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from streamaug.models.registry import register_translator

__all__ = ["UNITConfig", "UNIT", "MultiScaleDiscriminator", "unit_preset", "PRESETS"]


@dataclass
class UNITConfig:
    """Hyper-parameters of the UNIT translator, its losses and optimizers (defaults: Liu et al.).

    Attributes:
        patch_size: side ``P`` of the square patches (divisible by ``2 ** n_downsample``).
        in_channels: image channels (1 for X-rays).
        ngf: generator/encoder base width; width doubles at each downsampling.
        n_downsample: stride-2 downsamplings in the encoder (mirrored by the generator).
        n_res: residual blocks per encoder and per generator, *including* the shared ones.
        n_shared: of those, how many are shared between the two domains (encoder end/generator start).
        ndf: discriminator base width.
        dis_layers: stride-2 conv layers per discriminator scale.
        dis_scales: number of scales (input downsampled x2 between scales).
        gan_w, recon_x_w, recon_kl_w, recon_x_cyc_w, recon_kl_cyc_w: loss weights (UNIT defaults
            1, 10, 0.01, 10, 0.01).
        lr, beta1, beta2, weight_decay: Adam settings for both optimizers (1e-4, 0.5, 0.999, 1e-4).
    """

    patch_size: int = 128
    in_channels: int = 1
    ngf: int = 64
    n_downsample: int = 2
    n_res: int = 4
    n_shared: int = 1
    ndf: int = 64
    dis_layers: int = 4
    dis_scales: int = 3
    gan_w: float = 1.0
    recon_x_w: float = 10.0
    recon_kl_w: float = 0.01
    recon_x_cyc_w: float = 10.0
    recon_kl_cyc_w: float = 0.01
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if not 1 <= self.n_shared <= self.n_res:
            raise ValueError(f"need 1 <= n_shared <= n_res, got n_shared={self.n_shared}, n_res={self.n_res}")
        if self.patch_size % (2**self.n_downsample):
            raise ValueError(f"patch_size {self.patch_size} must be divisible by 2**n_downsample")
        smallest = self.patch_size // 2 ** (self.dis_scales - 1)
        if smallest < 2**self.dis_layers:
            raise ValueError(
                f"patch_size {self.patch_size} too small for {self.dis_scales} discriminator scales of "
                f"{self.dis_layers} stride-2 layers (coarsest input {smallest} < {2 ** self.dis_layers}); "
                "use fewer dis_scales/dis_layers or a larger patch"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints and run configs)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNITConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown UNITConfig keys: {sorted(unknown)}")
        return cls(**d)


PRESETS: dict[str, dict[str, Any]] = {
    # Liu et al. defaults; patch 128 (Gupta et al. do not state it; 128 keeps lesion detail at s=1-2
    # on 1024x512 images while training on one GPU). Set patch_size=256 for UNIT's own crop size.
    "paper": dict(patch_size=128, ngf=64, n_res=4, n_shared=1, ndf=64, dis_layers=4, dis_scales=3),
    "small": dict(patch_size=64, ngf=32, n_res=3, n_shared=1, ndf=32, dis_layers=4, dis_scales=2),
    # tests and the CPU demo: a few hundred steps in minutes on 2 cores. lr 5e-4, not UNIT's 1e-4 (meant
    # for ~1e6 steps): after 1,200 steps on BTXRD lower_limb the held-out KID was 0.72 vs 1.05 (original
    # recipe) and 0.84 vs 1.08 (several crops per box), seed 0 (benchmarks/translator_quality.py --lr)
    "tiny": dict(patch_size=32, ngf=8, n_res=2, n_shared=1, ndf=8, dis_layers=3, dis_scales=2, lr=5e-4),
}


def unit_preset(name: str, **overrides: Any) -> UNITConfig:
    """A :class:`UNITConfig` preset (``"paper"``, ``"small"``, ``"tiny"``) with optional overrides.

    Examples:
        >>> unit_preset("tiny").patch_size
        32
        >>> unit_preset("paper", patch_size=256).ngf
        64
    """
    if name not in PRESETS:
        raise KeyError(f"unknown UNIT preset {name!r}; choose from {sorted(PRESETS)}")
    return UNITConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------- building blocks


def _conv(cin: int, cout: int, k: int, stride: int = 1, norm: str = "in", act: str = "relu") -> nn.Sequential:
    """Reflect-padded conv + norm (``in`` instance, ``ln`` layer, ``none``) + activation."""
    layers: list[nn.Module] = [nn.ReflectionPad2d(k // 2 if stride == 1 else 1),
                               nn.Conv2d(cin, cout, k, stride, bias=True)]
    if norm == "in":
        layers.append(nn.InstanceNorm2d(cout, affine=True))
    elif norm == "ln":
        layers.append(nn.GroupNorm(1, cout))  # layer norm over (C, H, W), per-channel affine
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "lrelu":
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """``x + conv-in-relu-conv-in(x)`` at constant width, shape ``(B, C, H, W)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(dim, dim, 3), _conv(dim, dim, 3, act="none"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    """Private part of one domain's encoder: ``(B, C_in, P, P) -> (B, ngf * 2**d, P / 2**d, P / 2**d)``."""

    def __init__(self, cfg: UNITConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(cfg.in_channels, cfg.ngf, 7)]
        dim = cfg.ngf
        for _ in range(cfg.n_downsample):
            layers.append(_conv(dim, dim * 2, 4, stride=2))
            dim *= 2
        layers += [ResBlock(dim) for _ in range(cfg.n_res - cfg.n_shared)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Generator(nn.Module):
    """Private part of one domain's generator: latent features -> ``(B, C_in, P, P)`` in ``[-1, 1]``."""

    def __init__(self, cfg: UNITConfig) -> None:
        super().__init__()
        dim = cfg.ngf * 2**cfg.n_downsample
        layers: list[nn.Module] = [ResBlock(dim) for _ in range(cfg.n_res - cfg.n_shared)]
        for _ in range(cfg.n_downsample):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(dim, dim // 2, 5, norm="ln")]
            dim //= 2
        layers += [_conv(dim, cfg.in_channels, 7, norm="none", act="none"), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MultiScaleDiscriminator(nn.Module):
    """LSGAN patch discriminator applied at ``dis_scales`` scales (UNIT's ``MsImageDis``).

    Each scale: ``dis_layers`` 4x4 stride-2 convs (leaky ReLU, no norm) and a 1x1 conv to one channel.
    Input ``(B, C, P, P)`` in ``[-1, 1]``; output a list of ``(B, 1, h_s, w_s)`` score maps.
    """

    def __init__(self, cfg: UNITConfig) -> None:
        super().__init__()
        self.scales = nn.ModuleList()
        for _ in range(cfg.dis_scales):
            layers: list[nn.Module] = [_conv(cfg.in_channels, cfg.ndf, 4, 2, norm="none", act="lrelu")]
            dim = cfg.ndf
            for _ in range(cfg.dis_layers - 1):
                layers.append(_conv(dim, dim * 2, 4, 2, norm="none", act="lrelu"))
                dim *= 2
            layers.append(nn.Conv2d(dim, 1, 1))
            self.scales.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, net in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outs.append(net(x))
        return outs


def _init_weights(module: nn.Module, kind: str) -> None:
    """UNIT init: Kaiming for encoders/generators, N(0, 0.02) for discriminators; zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if kind == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- the translator


@register_translator("unit")
class UNIT(nn.Module):
    """UNIT translator: ``translate(x_h) = G_l(E_h(x_h))`` on ``(B, 1, P, P)`` patches in ``[0, 1]``.

    Holds both VAEs (sharing the latent layers) and both discriminators, so one ``state_dict`` is
    the whole model. Inference only needs ``enc_h``, ``enc_shared``, ``gen_shared``, ``gen_l``.

    Args:
        config: a :class:`UNITConfig` (see :func:`unit_preset`).

    Examples:
        >>> m = UNIT(unit_preset("tiny")).eval()
        >>> x = torch.rand(2, 1, m.patch_size, m.patch_size)
        >>> y = m.translate(x)
        >>> y.shape, bool(y.min() >= 0) and bool(y.max() <= 1)
        (torch.Size([2, 1, 32, 32]), True)
    """

    config_cls = UNITConfig

    def __init__(self, config: UNITConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        dim = config.ngf * 2**config.n_downsample
        self.enc_h, self.enc_l = Encoder(config), Encoder(config)
        self.enc_shared = nn.Sequential(*[ResBlock(dim) for _ in range(config.n_shared)])
        self.gen_shared = nn.Sequential(*[ResBlock(dim) for _ in range(config.n_shared)])
        self.gen_h, self.gen_l = Generator(config), Generator(config)
        self.dis_h, self.dis_l = MultiScaleDiscriminator(config), MultiScaleDiscriminator(config)
        for m in (self.enc_h, self.enc_l, self.enc_shared, self.gen_shared, self.gen_h, self.gen_l):
            _init_weights(m, "kaiming")
        _init_weights(self.dis_h, "gaussian")
        _init_weights(self.dis_l, "gaussian")

    # Internal [-1, 1] API (used by the trainer) -------------------------------------------------
    def _encode(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """``(B, C, P, P)`` in ``[-1, 1]`` -> latent mean ``mu`` ``(B, 4 ngf, P/4, P/4)``."""
        enc = self.enc_h if domain == "h" else self.enc_l
        return self.enc_shared(enc(x))

    def _decode(self, z: torch.Tensor, domain: str) -> torch.Tensor:
        """Latent ``(B, 4 ngf, P/4, P/4)`` -> image ``(B, C, P, P)`` in ``[-1, 1]`` of ``domain``."""
        gen = self.gen_h if domain == "h" else self.gen_l
        return gen(self.gen_shared(z))

    def generator_parameters(self) -> list[nn.Parameter]:
        """Encoders + generators (shared layers once): what the generator optimizer updates."""
        mods = (self.enc_h, self.enc_l, self.enc_shared, self.gen_shared, self.gen_h, self.gen_l)
        return [p for m in mods for p in m.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """Both discriminators' parameters."""
        return list(self.dis_h.parameters()) + list(self.dis_l.parameters())

    # Public [0, 1] API ---------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        c, p = self.config.in_channels, self.patch_size
        if x.dim() != 4 or x.shape[1] != c or x.shape[-2:] != (p, p):
            raise ValueError(f"expected patches (B, {c}, {p}, {p}), got {tuple(x.shape)}")

    def encode_normal(self, x_h: torch.Tensor) -> torch.Tensor:
        """Latent mean ``E_h(x_h)``: ``(B, 1, P, P)`` in ``[0, 1]`` -> ``(B, 4 ngf, P/4, P/4)``."""
        self._check(x_h)
        return self._encode(x_h * 2 - 1, "h")

    def encode_lesion(self, x_l: torch.Tensor) -> torch.Tensor:
        """Latent mean ``E_l(x_l)``: ``(B, 1, P, P)`` in ``[0, 1]`` -> ``(B, 4 ngf, P/4, P/4)``."""
        self._check(x_l)
        return self._encode(x_l * 2 - 1, "l")

    def decode_normal(self, z: torch.Tensor) -> torch.Tensor:
        """``G_h(z)``: latent -> ``(B, 1, P, P)`` in ``[0, 1]``."""
        return (self._decode(z, "h") + 1) / 2

    def decode_lesion(self, z: torch.Tensor) -> torch.Tensor:
        """``G_l(z)``: latent -> ``(B, 1, P, P)`` in ``[0, 1]``."""
        return (self._decode(z, "l") + 1) / 2

    def translate(self, x_h: torch.Tensor) -> torch.Tensor:
        """Normal -> lesion: ``G_l(E_h(x_h))`` with the latent mean (no noise).

        Args:
            x_h: ``(B, 1, P, P)`` normal patches in ``[0, 1]``.

        Returns:
            ``(B, 1, P, P)`` lesion-like patches in ``[0, 1]``, same dtype as the input.
        """
        return self.decode_lesion(self.encode_normal(x_h)).clamp(0, 1)

    def translate_to_normal(self, x_l: torch.Tensor) -> torch.Tensor:
        """Lesion -> normal: ``G_h(E_l(x_l))``; ``(B, 1, P, P)`` in ``[0, 1]`` -> same."""
        return self.decode_normal(self.encode_lesion(x_l)).clamp(0, 1)

    def forward(self, x_h: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`translate`."""
        return self.translate(x_h)
