"""The slots a template piece may hold: example values, typed like what the composer writes in their place.

The composer substitutes every `SLOT_<NAME>` in a piece by the text it chose for that name (see
`nncaption.agents.compose_source.render`); these definitions only make the template modules valid, checked Python.

Two slots live only inside docstrings and need no definition: SLOT_CELL (the cell's name) and SLOT_FEED_DOC.
"""

from collections.abc import Callable

import torch.nn as nn

SLOT_EMBED: int = 128
SLOT_HIDDEN: int = 256
SLOT_LAYERS: int = 1
SLOT_HEADS: int = 4
SLOT_DROPOUT: float = 0.2
SLOT_FEED: bool = False
SLOT_SIZES: tuple[tuple[str, int], ...] = (("embed", SLOT_EMBED), ("hidden", SLOT_HIDDEN), ("layers", SLOT_LAYERS))
SLOT_SUPPORTED: set[str] = {"lr", "momentum", "dropout", "embed", "hidden", "layers"}
SLOT_RNN: Callable[..., nn.Module] = nn.LSTM
