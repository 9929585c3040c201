"""Template: the captioning `Net` (the Net API class) around the snippet's encoder and a `CaptionDecoder`.

`Backbone` is the snippet's network (the composer renames the snippet's `Net`); the header imports a stand-in with
the same interface, and the RNN decoder stands for either decoder (both take the same leading arguments).
"""

import torch
import torch.nn as nn

from nncaption.agents.templates.constants import DECODER_SIZES, DROPOUT, GRAD_CLIP, PAD
from nncaption.agents.templates.pick_first import pick_captions
from nncaption.agents.templates.rnn_decoder import CaptionDecoder
from nncaption.agents.templates.standins import Backbone
from nncaption.agents.templates.teacher import teacher_inputs

# nncaption-template: start


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        self.vocab_size = int(out_shape[0])
        dropout = float(prm.get('dropout', DROPOUT))
        sizes = [int(prm.get(key, default)) for key, default in DECODER_SIZES]
        backbone = Backbone(in_shape, (1,), prm, device)
        self.encoder = backbone.features  # images -> [B, feature_dim, h, w]; the classifier head is dropped
        self.decoder = CaptionDecoder(backbone.feature_dim, self.vocab_size, dropout, *sizes)
        self.last_loss = None
        self.to(device)

    def train_setup(self, prm):
        self.to(self.device)
        self.criterion = nn.CrossEntropyLoss(ignore_index=PAD)
        beta1 = min(float(prm.get('momentum', 0.9)), 0.999)
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=float(prm['lr']), betas=(beta1, 0.999))

    def learn(self, train_data):
        self.train()
        total, batches = 0.0, 0
        for images, captions in train_data:
            images = images.to(self.device)
            caps = pick_captions(captions.to(self.device).long())
            logits, _ = self.forward(images, caps)
            loss = self.criterion(logits.reshape(-1, self.vocab_size), caps[:, 1:].reshape(-1))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.parameters(), GRAD_CLIP)
            self.optimizer.step()
            self.last_loss = float(loss.detach())
            total += self.last_loss
            batches += 1
        return total / max(batches, 1)

    def forward(self, images, captions=None, hidden_state=None):
        fmap = self.encoder(images.to(self.device))
        if captions is not None:
            return self.decoder(fmap, teacher_inputs(captions), hidden_state)
        return self.decoder.greedy(fmap, hidden_state)
