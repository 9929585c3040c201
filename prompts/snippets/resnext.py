# nncaption-snippet: name=resnext family=residual-grouped summary="ResNeXt-style bottlenecks with cardinality 8 grouped 3x3 convs, widths 32-128, blocks [1,2,2]"
# nncaption-convention: self.features maps images [B,C,H,W] to a map [B, self.feature_dim, H/8, W/8]; the head (self.pool, self.classifier) is separate.
import torch
import torch.nn as nn


def supported_hyperparameters():
    return {'lr', 'momentum'}


class ResNeXtBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride, cardinality):
        super().__init__()
        mid = out_channels // 2
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=cardinality, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False),
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
        widths, blocks, cardinality = [32, 64, 128], [1, 2, 2], 8
        layers = [nn.Conv2d(in_shape[1], 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True)]
        in_channels = 24
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(ResNeXtBlock(in_channels, w, 2 if (i > 0 and j == 0) else 1, cardinality))
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
