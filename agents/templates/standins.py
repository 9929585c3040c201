"""Stand-ins for what a composed file gets from the backbone snippet, so that the `net` template type-checks."""

import torch.nn as nn


class Backbone(nn.Module):
    """The snippet's network as the composer renames it: `features` maps images to [B, feature_dim, h, w]."""

    feature_dim: int

    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.feature_dim = 8
        self.features = nn.Conv2d(int(in_shape[1]), self.feature_dim, 3)
