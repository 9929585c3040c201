# nncaption-snippet: name=regnet family=regnet summary="RegNetX-style stages of grouped-conv bottleneck blocks (group width 8, bottleneck ratio 1), widths 24-96, depths [1,2,3]"
# nncaption-convention: self.features maps images [B,C,H,W] to a map [B, self.feature_dim, H/8, W/8]; the head (self.pool, self.classifier) is separate.
import torch
import torch.nn as nn


def supported_hyperparameters():
    return {'lr', 'momentum'}


class XBlock(nn.Module):
    """1x1 conv, grouped 3x3 conv (stride), 1x1 conv, with a projected shortcut when shapes change."""

    def __init__(self, in_channels, out_channels, stride, group_width):
        super().__init__()
        groups = max(1, out_channels // group_width)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        widths, depths, group_width = [24, 48, 96], [1, 2, 3], 8
        stem = 16
        layers = [nn.Conv2d(in_shape[1], stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
        in_channels = stem
        for w, d in zip(widths, depths):
            for i in range(d):
                stride = 2 if (i == 0 and w != widths[0]) else 1
                layers.append(XBlock(in_channels, w, stride, group_width))
                in_channels = w
        self.features = nn.Sequential(*layers)
        self.feature_dim = widths[-1]
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
