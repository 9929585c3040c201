"""Template: the Transformer `CaptionDecoder` (pre-norm, causal self-attention, cross-attention to the feature map)."""

import math

import torch
import torch.nn as nn

from nncaption.agents.templates.constants import EOS, MAX_DECODE_LEN, PAD, SOS

# nncaption-template: start


def sinusoid_positions(n, dim, device):
    """Fixed sinusoidal position codes [1, n, dim]."""
    pos = torch.arange(n, dtype=torch.float32, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(n, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe.unsqueeze(0)


class CaptionDecoder(nn.Module):
    """Transformer decoder (pre-norm, causal self-attention) cross-attending to the flattened feature map."""

    def __init__(self, feature_dim, vocab_size, dropout, embed_dim, hidden_dim, num_layers, num_heads):
        super().__init__()
        self.embed_dim = embed_dim
        self.feat_proj = nn.Linear(feature_dim, embed_dim)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        layer = nn.TransformerDecoderLayer(embed_dim, num_heads, hidden_dim, dropout, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers)
        self.norm = nn.LayerNorm(embed_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, vocab_size)

    def memory(self, fmap):
        """Memory tokens [B, h*w, embed_dim] from the feature map [B, D, h, w]."""
        tokens = fmap.flatten(2).transpose(1, 2)
        mem = self.feat_proj(tokens)
        return mem + sinusoid_positions(mem.shape[1], self.embed_dim, mem.device)

    def forward(self, fmap, inputs, state=None):
        """Teacher forcing: logits [B, T, V] for the given input tokens, and the memory."""
        mem = self.memory(fmap) if state is None else state
        t = inputs.shape[1]
        x = self.drop(self.embed(inputs) + sinusoid_positions(t, self.embed_dim, inputs.device))
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=inputs.device), diagonal=1)
        out = self.decoder(x, mem, tgt_mask=causal)
        return self.head(self.norm(out)), mem

    def greedy(self, fmap, state=None):
        """Free-running greedy decoding from SOS: ids [B, L] and the memory."""
        mem = self.memory(fmap) if state is None else state
        b = fmap.shape[0]
        tokens = torch.full((b, 1), SOS, dtype=torch.long, device=fmap.device)
        done = torch.zeros(b, dtype=torch.bool, device=fmap.device)
        for _ in range(MAX_DECODE_LEN):
            logits, _ = self.forward(fmap, tokens, mem)
            token = logits[:, -1].argmax(dim=-1, keepdim=True)
            token = token.masked_fill(done.unsqueeze(1), PAD)
            tokens = torch.cat([tokens, token], dim=1)
            done = done | (token.squeeze(1) == EOS)
            if bool(done.all()):
                break
        return tokens[:, 1:], mem
