# nncaption-snippet: name=mlpmixer family=mlp summary="MLP-Mixer: 4x4 patches, dim 96, 4 layers of token-mixing and channel-mixing MLPs; patch tokens returned as a grid"
# nncaption-convention: self.features maps images [B,C,H,W] to a map [B, self.feature_dim, H/4, W/4] (patch tokens as a grid); the head (self.pool, self.classifier) is separate.
import torch
import torch.nn as nn


def supported_hyperparameters():
    return {'lr', 'momentum', 'dropout'}


class MixerLayer(nn.Module):
    def __init__(self, tokens, dim, token_hidden, channel_hidden, dropout):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Dropout(dropout),
                                       nn.Linear(token_hidden, tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Dropout(dropout),
                                         nn.Linear(channel_hidden, dim))

    def forward(self, x):  # x: [B, tokens, dim]
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MixerEncoder(nn.Module):
    def __init__(self, in_channels, image_size, patch, dim, depth, dropout):
        super().__init__()
        self.grid = (image_size[0] // patch, image_size[1] // patch)
        tokens = self.grid[0] * self.grid[1]
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.layers = nn.Sequential(*[MixerLayer(tokens, dim, tokens * 2, dim * 2, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.patch_embed(x)
        b, d, h, w = x.shape
        tokens = self.norm(self.layers(x.flatten(2).transpose(1, 2)))
        return tokens.transpose(1, 2).reshape(b, d, h, w)


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        dropout = float(prm.get('dropout', 0.1))
        self.features = MixerEncoder(in_shape[1], (in_shape[2], in_shape[3]), patch=4, dim=96, depth=4,
                                     dropout=dropout)
        self.feature_dim = 96
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
