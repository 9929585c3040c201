"""Template: `pick_captions` for teacher = random (one random non-empty reference per image)."""

import torch

from nncaption.agents.templates.constants import PAD

# nncaption-template: start


def pick_captions(captions):
    """One reference per image ([B, Ncap, T] -> [B, T]): a random non-empty caption, trailing PAD columns cut."""
    if captions.dim() == 3:
        b = captions.shape[0]
        valid = (captions[:, :, 0] != PAD).float() + 1e-6
        idx = torch.multinomial(valid, 1).squeeze(1)
        captions = captions[torch.arange(b, device=captions.device), idx]
    length = int((captions != PAD).sum(dim=1).max())
    return captions[:, : max(length, 2)]
