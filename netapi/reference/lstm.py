"""Reference captioner: small CNN encoder + LSTM decoder (Show-and-Tell with the image at every step).

A standalone Net API candidate (see netapi/CONTRACT.md). The image feature (a
flattened 4x4 conv grid, so positions survive) primes the LSTM at step 0, as in
Show and Tell, and is fed again beside every word embedding ("par-inject"),
which lets it learn in a few CPU epochs (image-at-step-0 alone lagged far
behind). `learn` uses teacher forcing on all Ncap reference captions of each
image (the image is encoded once); free-running decoding is greedy from SOS.
"""

import torch
import torch.nn as nn

PAD, SOS, EOS = 0, 1, 2
MAX_DECODE_LEN = 20


def supported_hyperparameters():
    return {'lr', 'momentum', 'dropout'}


def conv_block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Encoder(nn.Module):
    """A full-resolution conv, four stride-2 conv blocks, a fixed 4x4 grid flattened to one feature vector."""

    def __init__(self, in_ch, out_dim, dropout, width=32, grid=4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            conv_block(width, width),
            conv_block(width, width * 2),
            conv_block(width * 2, width * 3),
            conv_block(width * 3, width * 4),
            nn.AdaptiveAvgPool2d(grid),
        )
        self.proj = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(width * 4 * grid * grid, out_dim))

    def forward(self, images):
        return self.proj(self.body(images))


def all_captions(captions):
    """Every caption of every image as its own row: [B, Ncap, T] -> ([B*Ncap, T], image index per row).

    Rows that hold no caption (all PAD) are dropped.
    """
    if captions.dim() == 2:
        captions = captions.unsqueeze(1)
    b, ncap, t = captions.shape
    rows = captions.reshape(b * ncap, t)
    owner = torch.arange(b, device=captions.device).repeat_interleave(ncap)
    keep = rows[:, 0] != PAD
    return rows[keep], owner[keep]


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        self.vocab_size = int(out_shape[0])
        embed_dim, feat_dim, hidden = 128, 128, 256
        dropout = float(prm.get('dropout', 0.1))
        self.encoder = Encoder(int(in_shape[1]), feat_dim, dropout)
        self.embed = nn.Embedding(self.vocab_size, embed_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(embed_dim + feat_dim, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, self.vocab_size)
        self.last_loss = None
        self.to(device)

    def train_setup(self, prm):
        self.to(self.device)
        self.criterion = nn.CrossEntropyLoss(ignore_index=PAD)
        self.optimizer = torch.optim.AdamW(
            self.parameters(), lr=float(prm['lr']), betas=(float(prm.get('momentum', 0.9)), 0.999)
        )

    def step_inputs(self, tokens, feat):
        """Word embeddings with the image feature beside each: [B, L] -> [B, L, E + F]."""
        emb = self.drop(self.embed(tokens))
        return torch.cat([emb, feat.unsqueeze(1).expand(-1, tokens.shape[1], -1)], dim=2)

    def init_state(self, feat):
        """Step 0: the image alone (a PAD word, whose embedding is zero) primes the LSTM; return (h, c)."""
        pad = torch.full((feat.shape[0], 1), PAD, dtype=torch.long, device=feat.device)
        _, state = self.lstm(self.step_inputs(pad, feat))
        return state

    def learn(self, train_data):
        self.train()
        total, batches = 0.0, 0
        for images, captions in train_data:
            images = images.to(self.device, non_blocking=True)
            rows, owner = all_captions(captions.to(self.device).long())
            feat = self.encoder(images)[owner]  # the image is encoded once for its Ncap captions
            out, _ = self.lstm(self.step_inputs(rows[:, :-1], feat), self.init_state(feat))
            logits = self.head(self.drop(out))
            loss = self.criterion(logits.reshape(-1, self.vocab_size), rows[:, 1:].reshape(-1))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.parameters(), 1.0)
            self.optimizer.step()
            self.last_loss = float(loss.detach())
            total += self.last_loss
            batches += 1
        return total / max(batches, 1)

    def forward(self, images, captions=None, hidden_state=None):
        feat = self.encoder(images)
        state = self.init_state(feat) if hidden_state is None else hidden_state
        if captions is not None:  # teacher forcing on the first caption: logits for tokens 1..T-1
            if captions.dim() == 3:
                captions = captions[:, 0, :]
            out, state = self.lstm(self.step_inputs(captions[:, :-1], feat), state)
            return self.head(self.drop(out)), state
        b = images.shape[0]
        token = torch.full((b, 1), SOS, dtype=torch.long, device=images.device)
        done = torch.zeros(b, dtype=torch.bool, device=images.device)
        ids = []
        for _ in range(MAX_DECODE_LEN):
            out, state = self.lstm(self.step_inputs(token, feat), state)
            token = self.head(out).argmax(-1).masked_fill(done.unsqueeze(1), PAD)  # [B, 1]
            ids.append(token)
            done |= token.squeeze(1) == EOS
            if bool(done.all()):
                break
        return torch.cat(ids, dim=1), state
