# nncaption-snippet: name=vit family=transformer summary="Small Vision Transformer: 4x4 patches, dim 96, 4 pre-norm encoder layers, 4 heads, learned positions; patch tokens returned as a grid"
# nncaption-convention: self.features maps images [B,C,H,W] to a map [B, self.feature_dim, H/4, W/4] (patch tokens as a grid); the head (self.pool, self.classifier) is separate.
import torch
import torch.nn as nn


def supported_hyperparameters():
    return {'lr', 'momentum', 'dropout'}


class ViTEncoder(nn.Module):
    """Patch embedding + transformer encoder; returns the patch tokens reshaped to [B, D, H/p, W/p]."""

    def __init__(self, in_channels, image_size, patch, dim, depth, heads, mlp_dim, dropout):
        super().__init__()
        self.grid = (image_size[0] // patch, image_size[1] // patch)
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout, activation='gelu', batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.patch_embed(x)  # [B, D, h, w]
        b, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = self.norm(self.encoder(tokens + self.pos[:, : h * w]))
        return tokens.transpose(1, 2).reshape(b, d, h, w)


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        dropout = float(prm.get('dropout', 0.1))
        dim = 96
        self.features = ViTEncoder(in_shape[1], (in_shape[2], in_shape[3]), patch=4, dim=dim, depth=4, heads=4,
                                   mlp_dim=2 * dim, dropout=dropout)
        self.feature_dim = dim
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(self.feature_dim, out_shape[0])
        self.to(device)

    def train_setup(self, prm):
        self.to(self.device)
        self.criteria = (nn.CrossEntropyLoss().to(self.device),)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=prm['lr'], momentum=prm['momentum'])

    def learn(self, train_data):
        self.train()
        for inputs, labels in train_data:
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            loss = self.criteria[0](self(inputs), labels)
            loss.backward()
            nn.utils.clip_grad_norm_(self.parameters(), 3)
            self.optimizer.step()

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(x)
