"""`tiny_candidate(...)`: a real tiny captioner that differs from the default in exactly one behaviour.

Shared by the runner, service and CLI tests (a helper module, not a test module: test files never import each
other). The candidate is a full Net API file whose knobs (output style, caption use, a NaN at batch N, a sleep or
busy loop in learn, an exception in a named method, ...) are module constants.
"""

from __future__ import annotations

TEMPLATE = '''
import time
import torch
import torch.nn as nn

OUTPUT = {output!r}          # "ids" | "logits" | "tuple" | "none" | "badvocab" | "nanlogits"
CAPTION_USE = {caption_use!r}  # "first" (captions[:, 0, :]) | "all"
NEEDS_CAPTIONS = {needs_captions!r}
NAN_AT_BATCH = {nan_at_batch!r}
SLEEP_IN_LEARN = {sleep_in_learn!r}
SPIN_IN_LEARN = {spin_in_learn!r}  # CPU seconds of busy work per batch
SWALLOW = {swallow!r}
FAIL_IN = {fail_in!r}        # None | "init" | "setup" | "learn" | "learn2" | "forward"
WIDE = {wide!r}


def supported_hyperparameters():
    return {{'lr', 'momentum', 'dropout'}}


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        if FAIL_IN == "init":
            raise KeyError("no_such_key")
        self.device = device
        self.vocab = out_shape[0]
        h = 4096 if WIDE else 32
        self.enc = nn.Sequential(nn.Conv2d(in_shape[1], 8, 3, stride=4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, h))
        self.emb = nn.Embedding(self.vocab, h)
        self.cell = nn.GRUCell(h, h)
        self.out = nn.Linear(h, self.vocab)
        self.epochs_seen = 0
        self.to(device)

    def train_setup(self, prm):
        if FAIL_IN == "setup":
            raise AttributeError("'Net' object has no attribute 'optimiser'")
        self.opt = torch.optim.Adam(self.parameters(), lr=prm['lr'])
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=0)

    def teacher(self, images, caps):
        h = self.enc(images)
        logits = []
        for t in range(caps.shape[1] - 1):
            h = self.cell(self.emb(caps[:, t]), h)
            logits.append(self.out(h))
        return torch.stack(logits, 1)

    def learn(self, train_data):
        self.epochs_seen += 1
        self.n_batches = len(train_data)  # sized like a DataLoader
        if FAIL_IN == "learn2" and self.epochs_seen == 2:
            raise RuntimeError("learn broke in epoch 2")
        try:
            for i, (images, captions) in enumerate(train_data):
                if FAIL_IN == "learn":
                    raise ZeroDivisionError("division by zero")
                if SLEEP_IN_LEARN:
                    time.sleep(SLEEP_IN_LEARN)
                if SPIN_IN_LEARN:
                    spin_end = time.process_time() + SPIN_IN_LEARN
                    while time.process_time() < spin_end:
                        pass
                caps = captions[:, 0, :] if CAPTION_USE == "first" else captions.flatten(0, 1)
                imgs = images if CAPTION_USE == "first" else images.repeat_interleave(captions.shape[1], 0)
                logits = self.teacher(imgs, caps)
                loss = self.loss_fn(logits.reshape(-1, self.vocab), caps[:, 1:].reshape(-1))
                if NAN_AT_BATCH is not None and i + 1 >= NAN_AT_BATCH:
                    loss = loss * float("nan")
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
                self.last_loss = float(loss.detach())
        except BaseException:
            if not SWALLOW:
                raise

    def forward(self, images, captions=None, hidden_state=None):
        if FAIL_IN == "forward":
            raise RuntimeError("forward is broken")
        if NEEDS_CAPTIONS:
            return self.teacher(images, captions[:, 0, :]), None
        if captions is not None:
            return self.teacher(images, captions[:, 0, :] if captions.dim() == 3 else captions), None
        h = self.enc(images)
        tok = torch.full((images.shape[0],), 1, dtype=torch.long, device=images.device)
        ids, logits = [], []
        for _ in range(12):
            h = self.cell(self.emb(tok), h)
            step = self.out(h)
            tok = step.argmax(-1)
            ids.append(tok)
            logits.append(step)
        ids, logits = torch.stack(ids, 1), torch.stack(logits, 1)
        if OUTPUT == "ids":
            return ids
        if OUTPUT == "logits":
            return logits
        if OUTPUT == "tuple":
            return ids, h
        if OUTPUT == "badvocab":
            return logits[:, :, :-1]
        if OUTPUT == "nanlogits":
            return logits * float("nan")
        return None
'''
def tiny_candidate(
    *,
    output: str = "ids",
    caption_use: str = "all",
    needs_captions: bool = False,
    nan_at_batch: int | None = None,
    sleep_in_learn: float = 0.0,
    spin_in_learn: float = 0.0,
    swallow: bool = False,
    fail_in: str | None = None,
    wide: bool = False,
) -> str:
    return TEMPLATE.format(output=output, caption_use=caption_use, needs_captions=needs_captions,
                           nan_at_batch=nan_at_batch, sleep_in_learn=sleep_in_learn, swallow=swallow,
                           spin_in_learn=spin_in_learn,
                           fail_in=fail_in, wide=wide)
