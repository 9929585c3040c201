"""Reference captioner: small CNN encoder + Transformer decoder attending over a 4x4 grid.

A standalone Net API candidate (see netapi/CONTRACT.md). The CNN's 4x4 feature
grid becomes 16 memory tokens (with learned position embeddings) for a
2-layer causal Transformer decoder. `learn` uses teacher forcing on all Ncap
reference captions of each image (the image is encoded once); free-running
decoding is greedy from SOS.
Free-running returns logits [B, L, V] (the other two references return ids).
"""

import torch
import torch.nn as nn

PAD, SOS, EOS = 0, 1, 2
MAX_DECODE_LEN = 20
MAX_POSITIONS = 64


def supported_hyperparameters():
    return {'lr', 'momentum', 'dropout'}


def conv_block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class GridEncoder(nn.Module):
    """A full-resolution conv, four stride-2 conv blocks, a 4x4 grid: 16 memory tokens of size d_model."""

    def __init__(self, in_ch, d_model, width=32, grid=4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            conv_block(width, width),
            conv_block(width, width * 2),
            conv_block(width * 2, width * 3),
            conv_block(width * 3, width * 4),
            nn.AdaptiveAvgPool2d(grid),
        )
        self.proj = nn.Linear(width * 4, d_model)
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, d_model))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, images):
        x = self.body(images).flatten(2).transpose(1, 2)  # [B, 16, C]
        return self.proj(x) + self.pos


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
        d_model = 128
        dropout = float(prm.get('dropout', 0.1))
        self.encoder = GridEncoder(int(in_shape[1]), d_model)
        self.embed = nn.Embedding(self.vocab_size, d_model, padding_idx=PAD)
        self.pos = nn.Embedding(MAX_POSITIONS, d_model)
        layer = nn.TransformerDecoderLayer(
            d_model, nhead=4, dim_feedforward=256, dropout=dropout, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers=2)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, self.vocab_size)
        self.last_loss = None
        self.to(device)

    def train_setup(self, prm):
        self.to(self.device)
        self.criterion = nn.CrossEntropyLoss(ignore_index=PAD)
        self.optimizer = torch.optim.AdamW(
            self.parameters(), lr=float(prm['lr']), betas=(float(prm.get('momentum', 0.9)), 0.999)
        )

    def decode_step(self, tokens, memory):
        """Logits for every position of the token prefix [B, L] -> [B, L, V]."""
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        x = self.embed(tokens) + self.pos(positions)
        mask = torch.triu(torch.ones(length, length, dtype=torch.bool, device=tokens.device), diagonal=1)
        out = self.decoder(x, memory, tgt_mask=mask, tgt_key_padding_mask=tokens == PAD)
        return self.head(self.norm(out))

    def learn(self, train_data):
        self.train()
        total, batches = 0.0, 0
        for images, captions in train_data:
            images = images.to(self.device, non_blocking=True)
            rows, owner = all_captions(captions.to(self.device).long())
            memory = self.encoder(images)[owner]  # the image is encoded once for its Ncap captions
            logits = self.decode_step(rows[:, :-1], memory)
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
        memory = self.encoder(images) if hidden_state is None else hidden_state
        if captions is not None:  # teacher forcing: logits for tokens 1..T-1
            if captions.dim() == 3:
                captions = captions[:, 0, :]
            return self.decode_step(captions[:, :-1], memory), memory
        b = images.shape[0]
        tokens = torch.full((b, 1), SOS, dtype=torch.long, device=images.device)
        done = torch.zeros(b, dtype=torch.bool, device=images.device)
        steps = []
        for _ in range(MAX_DECODE_LEN):
            logits = self.decode_step(tokens, memory)[:, -1]  # [B, V]
            nxt = logits.argmax(-1).masked_fill(done, EOS)
            steps.append(logits)
            tokens = torch.cat([tokens, nxt.unsqueeze(1)], dim=1)
            done |= nxt == EOS
            if bool(done.all()):
                break
        return torch.stack(steps, dim=1), memory  # logits [B, L, V]
