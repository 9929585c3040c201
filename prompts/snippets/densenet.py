# nncaption-snippet: name=densenet family=dense summary="DenseNet-BC-style: three dense blocks of 4 bottleneck layers, growth 12, 0.5-compression transitions"
# nncaption-convention: self.features maps images [B,C,H,W] to a map [B, self.feature_dim, H/8, W/8]; the head (self.pool, self.classifier) is separate.
import torch
import torch.nn as nn


def supported_hyperparameters():
    return {'lr', 'momentum'}


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (4*growth) then BN-ReLU-3x3 conv (growth); output concatenated to the input."""

    def __init__(self, in_channels, growth):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, 4 * growth, kernel_size=1, bias=False),
            nn.BatchNorm2d(4 * growth),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * growth, growth, kernel_size=3, padding=1, bias=False),
        )

    def forward(self, x):
        return torch.cat([x, self.body(x)], dim=1)


class Transition(nn.Sequential):
    def __init__(self, in_channels, out_channels):
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.AvgPool2d(kernel_size=2, stride=2),
        )


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        growth, block_sizes = 12, [4, 4, 4]
        channels = 2 * growth
        # stride-2 stem so that stem + two transitions make H/8
        layers = [nn.Conv2d(in_shape[1], channels, kernel_size=3, stride=2, padding=1, bias=False)]
        for i, n in enumerate(block_sizes):
            for _ in range(n):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            if i != len(block_sizes) - 1:
                out_channels = channels // 2
                layers.append(Transition(channels, out_channels))
                channels = out_channels
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels
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
