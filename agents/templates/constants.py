"""Template: the composed file's constants (the decoder sizes are defaults; the Net reads prm) and hyperparameters."""

from nncaption.agents.templates.slots import (
    SLOT_DROPOUT,
    SLOT_EMBED,
    SLOT_FEED,
    SLOT_HEADS,
    SLOT_HIDDEN,
    SLOT_LAYERS,
    SLOT_SIZES,
    SLOT_SUPPORTED,
)

# nncaption-template: start

PAD, SOS, EOS = 0, 1, 2
MAX_DECODE_LEN = 20
EMBED_DIM = SLOT_EMBED
HIDDEN_DIM = SLOT_HIDDEN
NUM_LAYERS = SLOT_LAYERS
NUM_HEADS = SLOT_HEADS
DROPOUT = SLOT_DROPOUT
FEED_FEATURES = SLOT_FEED
GRAD_CLIP = 1.0
# decoder sizes: read from prm (the designer's hyperparameters), these are the defaults
DECODER_SIZES = SLOT_SIZES


def supported_hyperparameters():
    return SLOT_SUPPORTED
