"""A 1x1-conv backbone obeying the forward contract, shared by the objective tests."""

import torch
from torch import nn


class TinyNet(nn.Module):
    """model(x, t, y) -> [B, C_out, H, W]; t and y reach the output, so guidance and time changes show."""

    def __init__(self, channels: int = 2, learn_sigma: bool = True, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels if learn_sigma else channels, 1)
        self.embed = nn.Embedding(num_classes + 1, 1)

    def forward(self, x, t, y=None):
        h = self.conv(x) + 1e-4 * t.view(-1, 1, 1, 1)
        if y is not None:
            h = h + self.embed(y).view(-1, 1, 1, 1)
        return torch.tanh(h)
