"""The source pieces the composer assembles into a captioning candidate (see `nncaption.agents.compose`).

Plain text templates: the file header, the constants (decoder sizes are only defaults, the Net reads the
designer's `prm`), caption helpers, the LSTM/GRU and Transformer decoders and the `Net` class.
"""

from __future__ import annotations

HEADER = '''{marker}
"""{summary}

{details}
"""

'''

CONSTANTS = '''PAD, SOS, EOS = 0, 1, 2
MAX_DECODE_LEN = 20
EMBED_DIM = {embed}
HIDDEN_DIM = {hidden}
NUM_LAYERS = {layers}
NUM_HEADS = {heads}
DROPOUT = {dropout}
FEED_FEATURES = {feed}
GRAD_CLIP = 1.0
# decoder sizes: read from prm (the designer's hyperparameters), these are the defaults
DECODER_SIZES = {sizes}


def supported_hyperparameters():
    return {supported}
'''

PICK_RANDOM = '''def pick_captions(captions):
    """One reference per image ([B, Ncap, T] -> [B, T]): a random non-empty caption, trailing PAD columns cut."""
    if captions.dim() == 3:
        b = captions.shape[0]
        valid = (captions[:, :, 0] != PAD).float() + 1e-6
        idx = torch.multinomial(valid, 1).squeeze(1)
        captions = captions[torch.arange(b, device=captions.device), idx]
    length = int((captions != PAD).sum(dim=1).max())
    return captions[:, : max(length, 2)]
'''

PICK_FIRST = '''def pick_captions(captions):
    """The first reference of each image ([B, Ncap, T] -> [B, T]), trailing PAD columns cut."""
    if captions.dim() == 3:
        captions = captions[:, 0, :]
    length = int((captions != PAD).sum(dim=1).max())
    return captions[:, : max(length, 2)]
'''

TEACHER_INPUTS = '''

def teacher_inputs(captions):
    """Decoder inputs for teacher forcing: tokens 0..T-2 of one caption per image."""
    if captions.dim() == 3:
        captions = captions[:, 0, :]
    return captions[:, :-1]
'''

RNN_DECODER = '''class CaptionDecoder(nn.Module):
    """{cell} decoder: pooled image features set the initial state{feed_doc}."""

    def __init__(self, feature_dim, vocab_size, dropout, embed_dim, hidden_dim, num_layers):
        super().__init__()
        self.num_layers = num_layers
        self.feat_proj = nn.Linear(feature_dim, hidden_dim)
{cell_proj}        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        rnn_input = embed_dim + (hidden_dim if FEED_FEATURES else 0)
        rnn_dropout = dropout if num_layers > 1 else 0.0
        self.rnn = nn.{cell}(rnn_input, hidden_dim, num_layers, batch_first=True, dropout=rnn_dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_dim, vocab_size)

    def context(self, fmap):
        """Global image context [B, hidden_dim] from the feature map [B, D, h, w]."""
        return torch.tanh(self.feat_proj(fmap.mean(dim=(2, 3))))

    def init_state(self, ctx):
        h = ctx.unsqueeze(0).repeat(self.num_layers, 1, 1).contiguous()
{init_return}

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
'''

TRANSFORMER_DECODER = '''def sinusoid_positions(n, dim, device):
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
'''

NET = '''class Net(nn.Module):
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
'''

SECTION = "# " + "-" * 75 + " {title}\n"


def rnn_decoder_source(cell: str, feed: bool) -> str:
    if cell == "LSTM":
        cell_proj = "        self.cell_proj = nn.Linear(hidden_dim, hidden_dim)\n"
        init_return = (
            "        c = torch.tanh(self.cell_proj(ctx)).unsqueeze(0).repeat(self.num_layers, 1, 1).contiguous()\n"
            "        return (h, c)"
        )
    else:
        cell_proj = ""
        init_return = "        return h"
    feed_doc = " and are fed at every step" if feed else ""
    return RNN_DECODER.format(cell=cell, cell_proj=cell_proj, init_return=init_return, feed_doc=feed_doc)
