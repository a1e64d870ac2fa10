"""The U-Net of Ronneberger, Fischer & Brox (2015), in PyTorch.

Per level: two 3x3 convolutions + ReLU (unpadded by default), then a 2x2 max-pool with stride 2
and twice the channels. Expanding path: 2x2 up-convolution halving the channels, centre-crop of
the skip connection, concatenation, two 3x3 convolutions. A final 1x1 convolution maps to classes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..metadata import ModelInfo


def _double_conv(cin: int, cout: int, pad: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers.append(nn.Conv2d(c, cout, 3, padding=pad, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dy = (x.shape[-2] - h) // 2
    dx = (x.shape[-1] - w) // 2
    return x[..., dy : dy + h, dx : dx + w]


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        depth: int = 4,
        base: int = 64,
        padding: str = "valid",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        pad = 1 if padding == "same" else 0
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(_double_conv(cin, w, pad, batch_norm))
            cin = w
        self.pool = nn.MaxPool2d(2, 2)
        self.bottom = _double_conv(widths[-2] if depth else in_channels, widths[-1], pad, batch_norm)
        # Dropout at the end of the contracting path, as in the paper (section 3.1).
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(2 * w, w, 2, stride=2))
            self.up_conv.append(_double_conv(2 * w, w, pad, batch_norm))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self._he_init()

    def _he_init(self):
        # Paper: Gaussian with std sqrt(2/N), N = incoming nodes of one neuron (k*k*C_in).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                k = m.kernel_size[0] * m.kernel_size[1]
                fan_in = k * (m.in_channels if isinstance(m, nn.Conv2d) else m.out_channels)
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits (N, classes, h_out, w_out)."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = up(x)
            x = conv(torch.cat([center_crop(skip, x.shape[-2], x.shape[-1]), x], dim=1))
        return self.head(x)


class SoftmaxUNet(nn.Module):
    """The deployed graph: U-Net followed by a softmax over classes (probabilities out)."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.unet(x), dim=1)


def build_unet(info: ModelInfo) -> UNet:
    return UNet(
        in_channels=info.in_channels,
        out_channels=info.out_channels,
        depth=info.depth,
        base=info.base,
        padding=info.padding,
        batch_norm=info.batch_norm,
        dropout=info.dropout,
    )
