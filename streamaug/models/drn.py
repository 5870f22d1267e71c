"""Dilated residual network (DRN-D, Yu et al. 2017) for binary X-ray classification.

The classifier of Gupta et al. (MIDL 2019, §4.2) is a DRN. DRN-D keeps the spatial
resolution of the later stages by replacing striding with dilation, and removes the
gridding artefacts of dilated convolutions with plain (non-residual) "degridding"
layers at the end:

======  ========================  ======  ========  ========
stage   layers                    stride  dilation  residual
======  ========================  ======  ========  ========
stem    7x7 conv (no max-pool)    1       1         no
1       3x3 conv x depths[0]      1       1         no
2       3x3 conv x depths[1]      2       1         no
3       BasicBlock x depths[2]    2       1         yes
4       BasicBlock x depths[3]    2       1         yes
5       BasicBlock x depths[4]    1       2         yes
6       BasicBlock x depths[5]    1       4         yes
7       3x3 conv x depths[6]      1       2         no (degrid)
8       3x3 conv x depths[7]      1       1         no (degrid)
======  ========================  ======  ========  ========

The feature map therefore has output stride 8; adaptive average pooling and one linear
layer give a single logit per image. Checkpoints keep the config next to the weights
(:func:`streamaug.models.checkpoint.save_classifier` / :func:`~streamaug.models.checkpoint.load_classifier`,
also importable from here), so a pseudo-label filter can rebuild the classifier from a path alone.
Importing this module registers the classifiers ``drn`` (a full :class:`DRNConfig` as keywords) and
``drn_<preset>`` for every preset of :data:`DRN_PRESETS`.

Examples:
    >>> import torch
    >>> model = DRN(DRNConfig.preset("tiny"))
    >>> model(torch.rand(2, 1, 64, 64)).shape
    torch.Size([2])
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

# the checkpoint functions lived here; they are re-exported for existing imports
from streamaug.models.checkpoint import CLASSIFIER_FORMAT as CHECKPOINT_FORMAT
from streamaug.models.checkpoint import LoadedClassifier, load_classifier, save_classifier
from streamaug.models.registry import register_classifier

__all__ = ["CHECKPOINT_FORMAT", "DRN", "DRN_PRESETS", "BasicBlock", "DRNConfig", "LoadedClassifier",
           "load_classifier", "save_classifier"]
_STRIDES = (1, 2, 2, 2, 1, 1, 1, 1)
_RESIDUAL = (False, False, True, True, True, True, False, False)


@dataclass(frozen=True)
class DRNConfig:
    """Widths, depths and dilations of a :class:`DRN`.

    Attributes:
        channels: output channels of stages 1-8 (the stem has ``channels[0]``).
        depths: number of convs (stages 1, 2, 7, 8) or residual blocks (stages 3-6).
        dilations: dilation of stages 1-8; DRN-D uses ``(1, 1, 1, 1, 2, 4, 2, 1)``.
        in_channels: input channels (1 for grey X-rays).
        stem_kernel: kernel size of the stem convolution.
        dropout: dropout probability before the final linear layer.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 512, 512)
    depths: tuple[int, ...] = (1, 1, 2, 2, 2, 2, 1, 1)
    dilations: tuple[int, ...] = (1, 1, 1, 1, 2, 4, 2, 1)
    in_channels: int = 1
    stem_kernel: int = 7
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("channels", "depths", "dilations"):
            value = tuple(int(v) for v in getattr(self, name))
            object.__setattr__(self, name, value)  # lists (from JSON) -> tuples
            if len(value) != 8:
                raise ValueError(f"DRNConfig.{name} needs 8 entries (stages 1-8), got {value}")
        if min(self.channels) < 1 or min(self.dilations) < 1 or min(self.depths) < 0:
            raise ValueError(f"DRNConfig: channels/dilations must be >= 1, depths >= 0: {self}")
        if min(self.depths[2:6]) < 1:
            raise ValueError("DRNConfig: stages 3-6 need at least one residual block")
        if self.stem_kernel % 2 != 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("DRNConfig: stem_kernel must be odd and dropout in [0, 1)")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DRNConfig:
        """A named preset (``paper``, ``small``, ``tiny``), optionally with fields replaced.

        Args:
            name: key of :data:`DRN_PRESETS`.
            **overrides: fields to replace, e.g. ``dropout=0.2``.

        Returns:
            The config.
        """
        if name not in DRN_PRESETS:
            raise KeyError(f"unknown DRN preset {name!r}; choose from {sorted(DRN_PRESETS)}")
        return dataclasses.replace(DRN_PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain-python dict (lists, ints, floats) for checkpoints and JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


DRN_PRESETS: dict[str, DRNConfig] = {
    # drn_d_22 of Yu et al. with one input channel: ~16M parameters.
    "paper": DRNConfig(),
    # A quarter of the widths, one block per stage: ~0.9M parameters.
    "small": DRNConfig(channels=(16, 16, 32, 64, 128, 128, 128, 128), depths=(1,) * 8),
    # Trains on 2 CPU cores at 64-128 px in seconds per epoch: ~75k parameters.
    "tiny": DRNConfig(channels=(8, 8, 16, 32, 32, 32, 32, 32), depths=(1,) * 8),
}


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int, dilation: int) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (projection shortcut when shapes change).

    Args:
        c_in: input channels.
        c_out: output channels.
        stride: stride of the first conv.
        dilation: dilation of both convs.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, c_in, H, W) -> (B, c_out, ceil(H/stride), ceil(W/stride))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class DRN(nn.Module):
    """DRN-D classifier: one input channel, one logit per image.

    Args:
        config: widths, depths and dilations; ``DRNConfig()`` is drn_d_22.

    Attributes:
        config: the config the model was built from (saved with the weights).
        output_stride: spatial stride of :meth:`features` (8 for DRN-D).
    """

    def __init__(self, config: DRNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DRNConfig()
        ch = config.channels
        self.stem = _conv_bn_relu(config.in_channels, ch[0], config.stem_kernel, 1, 1)
        stages: list[nn.Module] = []
        c_in = ch[0]
        for c_out, depth, stride, dil, residual in zip(ch, config.depths, _STRIDES, config.dilations, _RESIDUAL):
            layers: list[nn.Module] = []
            for i in range(depth):
                s = stride if i == 0 else 1
                if residual:
                    layers.append(BasicBlock(c_in, c_out, s, dil))
                else:
                    layers.append(_conv_bn_relu(c_in, c_out, 3, s, dil))
                c_in = c_out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.num_features = c_in
        self.output_stride = math.prod(s for s, d in zip(_STRIDES, config.depths) if d > 0)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(c_in, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def features(self, x: Tensor) -> Tensor:
        """Feature map before pooling.

        Args:
            x: images ``(B, in_channels, H, W)``.

        Returns:
            ``(B, channels[-1], ceil(H/8), ceil(W/8))`` for the default strides.
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"DRN expects (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Logits.

        Args:
            x: images ``(B, in_channels, H, W)``, any ``H, W >= 1``.

        Returns:
            Logits ``(B,)``; ``sigmoid`` gives P(lesion).
        """
        z = self.pool(self.features(x)).flatten(1)
        return self.fc(self.dropout(z)).squeeze(1)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """P(lesion) ``(B,)`` in ``[0, 1]`` for images ``(B, in_channels, H, W)``.

        Runs without gradients and does not change train/eval mode: call ``model.eval()``
        first so batch-norm uses running statistics.
        """
        return torch.sigmoid(self(x))


def _build(**config: Any) -> DRN:
    """``DRN(DRNConfig(**config))``: the ``drn`` factory, which classifier checkpoints are rebuilt with."""
    return DRN(DRNConfig(**config))


def _build_preset(preset: str, **overrides: Any) -> DRN:
    """A :data:`DRN_PRESETS` model with fields replaced: the ``drn_<preset>`` factories."""
    return DRN(DRNConfig.preset(preset, **overrides))


register_classifier("drn", _build)
for _preset in DRN_PRESETS:
    register_classifier(f"drn_{_preset}", functools.partial(_build_preset, _preset))
