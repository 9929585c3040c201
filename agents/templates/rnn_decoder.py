"""Template: the LSTM/GRU `CaptionDecoder` (slot SLOT_RNN is the cell class; flag `lstm` adds the cell state)."""

import torch
import torch.nn as nn

from nncaption.agents.templates.constants import EOS, FEED_FEATURES, MAX_DECODE_LEN, PAD, SOS
from nncaption.agents.templates.slots import SLOT_RNN

# nncaption-template: start


class CaptionDecoder(nn.Module):
    """SLOT_CELL decoder: pooled image features set the initial stateSLOT_FEED_DOC."""

    def __init__(self, feature_dim, vocab_size, dropout, embed_dim, hidden_dim, num_layers):
        super().__init__()
        self.num_layers = num_layers
        self.feat_proj = nn.Linear(feature_dim, hidden_dim)
        self.cell_proj = nn.Linear(hidden_dim, hidden_dim)  # only if lstm
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        rnn_input = embed_dim + (hidden_dim if FEED_FEATURES else 0)
        rnn_dropout = dropout if num_layers > 1 else 0.0
        self.rnn = SLOT_RNN(rnn_input, hidden_dim, num_layers, batch_first=True, dropout=rnn_dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_dim, vocab_size)

    def context(self, fmap):
        """Global image context [B, hidden_dim] from the feature map [B, D, h, w]."""
        return torch.tanh(self.feat_proj(fmap.mean(dim=(2, 3))))

    def init_state(self, ctx):
        h = ctx.unsqueeze(0).repeat(self.num_layers, 1, 1).contiguous()
        c = torch.tanh(self.cell_proj(ctx)).unsqueeze(0).repeat(self.num_layers, 1, 1).contiguous()  # only if lstm
        return (h, c)  # only if lstm
        return h  # only if gru

    def step_inputs(self, tokens, ctx):
        emb = self.drop(self.embed(tokens))
        if FEED_FEATURES:
            emb = torch.cat([emb, ctx.unsqueeze(1).expand(-1, emb.shape[1], -1)], dim=-1)
        return emb

    def forward(self, fmap, inputs, state=None):
        """Teacher forcing: logits [B, T, V] for the given input tokens, and the final state."""
        ctx = self.context(fmap)
        state = self.init_state(ctx) if state is None else state
        out, state = self.rnn(self.step_inputs(inputs, ctx), state)
        return self.head(self.drop(out)), state

    def greedy(self, fmap, state=None):
        """Free-running greedy decoding from SOS: ids [B, L] and the final state."""
        ctx = self.context(fmap)
        state = self.init_state(ctx) if state is None else state
        b = fmap.shape[0]
        token = torch.full((b, 1), SOS, dtype=torch.long, device=fmap.device)
        done = torch.zeros(b, dtype=torch.bool, device=fmap.device)
        steps = []
        for _ in range(MAX_DECODE_LEN):
            out, state = self.rnn(self.step_inputs(token, ctx), state)
            token = self.head(out[:, -1]).argmax(dim=-1, keepdim=True)
            token = token.masked_fill(done.unsqueeze(1), PAD)
            steps.append(token)
            done = done | (token.squeeze(1) == EOS)
            if bool(done.all()):
                break
        return torch.cat(steps, dim=1), state
