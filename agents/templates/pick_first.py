"""Template: `pick_captions` for teacher = first (the first reference of each image)."""

from nncaption.agents.templates.constants import PAD

# nncaption-template: start


def pick_captions(captions):
    """The first reference of each image ([B, Ncap, T] -> [B, T]), trailing PAD columns cut."""
    if captions.dim() == 3:
        captions = captions[:, 0, :]
    length = int((captions != PAD).sum(dim=1).max())
    return captions[:, : max(length, 2)]
