# nncaption-snippet: name=inception family=multi-branch summary="GoogLeNet-style Inception blocks: parallel 1x1, 3x3, double-3x3 and pool branches concatenated, widths 64-160"
# nncaption-convention: self.features maps images [B,C,H,W] to a map [B, self.feature_dim, H/8, W/8]; the head (self.pool, self.classifier) is separate.
import torch
import torch.nn as nn


def supported_hyperparameters():
    return {'lr', 'momentum', 'dropout'}


def conv_bn(in_channels, out_channels, kernel_size=1, stride=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InceptionBlock(nn.Module):
    """Four branches; the output has b1 + b3 + b5 + bp channels."""

    def __init__(self, in_channels, b1, b3_reduce, b3, b5_reduce, b5, bp):
        super().__init__()
        self.branch1 = conv_bn(in_channels, b1)
        self.branch3 = nn.Sequential(conv_bn(in_channels, b3_reduce), conv_bn(b3_reduce, b3, 3))
        # the 5x5 branch is two 3x3 convs, as in later Inception versions
        self.branch5 = nn.Sequential(conv_bn(in_channels, b5_reduce), conv_bn(b5_reduce, b5, 3), conv_bn(b5, b5, 3))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_bn(in_channels, bp))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        dropout = float(prm.get('dropout', 0.4))
        self.features = nn.Sequential(
            conv_bn(in_shape[1], 32, 3, stride=2),
            conv_bn(32, 48, 3),
            InceptionBlock(48, 16, 24, 32, 8, 8, 8),       # -> 64
            InceptionBlock(64, 24, 24, 40, 8, 16, 16),     # -> 96
            nn.MaxPool2d(3, stride=2, padding=1),
            InceptionBlock(96, 32, 32, 48, 8, 24, 24),     # -> 128
            nn.MaxPool2d(3, stride=2, padding=1),
            InceptionBlock(128, 48, 32, 64, 12, 24, 24),   # -> 160
        )
        self.feature_dim = 160
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
