# nncaption-snippet: name=efficientnet_b0 family=mbconv-se summary="EfficientNet-B0-style MBConv blocks with squeeze-excitation and SiLU, width 0.25, depth 0.5"
# nncaption-convention: self.features maps images [B,C,H,W] to a map [B, self.feature_dim, H/8, W/8]; the head (self.pool, self.classifier) is separate.
import math

import torch
import torch.nn as nn


def supported_hyperparameters():
    return {'lr', 'momentum', 'dropout'}


class SqueezeExcitation(nn.Module):
    def __init__(self, channels, squeeze_channels):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        scale = x.mean((2, 3), keepdim=True)
        scale = torch.sigmoid(self.fc2(self.act(self.fc1(scale))))
        return x * scale


class MBConv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, expand_ratio):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, kernel_size, stride, kernel_size // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.SiLU(inplace=True),
            SqueezeExcitation(hidden, max(1, in_channels // 4)),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        width, depth = 0.25, 0.5
        dropout = float(prm.get('dropout', 0.2))

        def ch(c):
            return max(8, int(c * width + 4) // 8 * 8)

        # expand, kernel, stride, channels, repeats (B0 table; strides cut to reach H/8 on small images)
        table = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                 (6, 5, 1, 192, 4), (6, 3, 1, 320, 1)]
        in_channels = ch(32)
        layers = [nn.Conv2d(in_shape[1], in_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(in_channels),
                  nn.SiLU(inplace=True)]
        for expand, k, s, c, n in table:
            out_channels = ch(c)
            for i in range(max(1, math.ceil(n * depth))):
                layers.append(MBConv(in_channels, out_channels, k, s if i == 0 else 1, expand))
                in_channels = out_channels
        self.feature_dim = ch(1280) // 2
        layers += [nn.Conv2d(in_channels, self.feature_dim, 1, bias=False), nn.BatchNorm2d(self.feature_dim),
                   nn.SiLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, out_shape[0]))
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
