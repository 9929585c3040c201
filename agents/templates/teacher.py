"""Template: `teacher_inputs`, the decoder inputs for teacher forcing."""

# nncaption-template: start


def teacher_inputs(captions):
    """Decoder inputs for teacher forcing: tokens 0..T-2 of one caption per image."""
    if captions.dim() == 3:
        captions = captions[:, 0, :]
    return captions[:, :-1]
