"""Broken: the free-running decode returns zero tokens per image, ids [B, 0] (eval-contract)."""
import torch
import torch.nn as nn

PAD, SOS, EOS = 0, 1, 2


def supported_hyperparameters():
    return {'lr', 'momentum', 'dropout'}


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        self.vocab_size = int(out_shape[0])
        self.encoder = nn.Sequential(
            nn.Conv2d(in_shape[1], 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 32),
        )
        self.embed = nn.Embedding(self.vocab_size, 16, padding_idx=PAD)
        self.gru = nn.GRU(16, 32, batch_first=True)
        self.head = nn.Linear(32, self.vocab_size)
        self.drop = nn.Dropout(float(prm['dropout']))
        self.to(device)

    def train_setup(self, prm):
        self.criterion = nn.CrossEntropyLoss(ignore_index=PAD)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=float(prm['lr']), momentum=float(prm['momentum']))

    def learn(self, train_data):
        self.train()
        total = 0.0
        for images, captions in train_data:
            caps = captions[:, 0, :].to(self.device)
            logits, _ = self.forward(images.to(self.device), caps)
            loss = self.criterion(logits.reshape(-1, self.vocab_size), caps[:, 1:].reshape(-1))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total += loss.item()
        return total

    def forward(self, images, captions=None, hidden_state=None):
        h = torch.tanh(self.encoder(images)).unsqueeze(0) if hidden_state is None else hidden_state
        if captions is not None:
            out, h = self.gru(self.drop(self.embed(captions[:, :-1])), h)
            return self.head(out), h
        token = torch.full((images.shape[0], 1), SOS, dtype=torch.long, device=images.device)
        ids = []
        for _ in range(12):
            out, h = self.gru(self.embed(token), h)
            token = self.head(out).argmax(-1)
            ids.append(token)
        return torch.cat(ids, dim=1)[:, :0], h
