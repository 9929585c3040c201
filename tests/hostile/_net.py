# ---- a small, valid Net API model (appended to every hostile file) ----
import torch
import torch.nn as nn


def supported_hyperparameters():
    return {"lr", "momentum", "dropout"}


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        self.vocab = int(out_shape[0])
        hidden = 32
        self.encoder = nn.Sequential(
            nn.Conv2d(in_shape[1], 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, hidden),
        )
        self.embed = nn.Embedding(self.vocab, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, self.vocab)
        self.to(device)

    def train_setup(self, prm):
        self.optimizer = torch.optim.SGD(self.parameters(), lr=prm["lr"], momentum=prm["momentum"])
        self.criterion = nn.CrossEntropyLoss(ignore_index=0)

    def learn(self, train_data):
        hook = globals().get("hostile_learn")
        if hook is not None:
            print("NNCAPTION-MARK hostile-started", flush=True)  # lets the test check the hostile code really ran
            hook()
        self.train()
        for images, captions in train_data:
            caps = captions[:, 0, :].to(self.device)
            logits, _ = self(images.to(self.device), caps[:, :-1])
            loss = self.criterion(logits.reshape(-1, self.vocab), caps[:, 1:].reshape(-1))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.last_loss = float(loss.detach())

    def forward(self, images, captions=None, hidden_state=None):
        h = self.encoder(images).unsqueeze(0)
        if captions is not None:
            out, h = self.rnn(self.embed(captions), h)
            return self.head(out), h
        token = torch.full((images.shape[0], 1), 1, dtype=torch.long, device=images.device)
        steps = []
        for _ in range(12):
            out, h = self.rnn(self.embed(token), h)
            token = self.head(out).argmax(-1)
            steps.append(token)
        return torch.cat(steps, dim=1)
