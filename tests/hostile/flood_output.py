# At import: write 1 GiB to stdout and 1 GiB to stderr, then behave as a normal model.
import os

_chunk = b"x" * (1 << 20)
for _ in range(1024):
    os.write(1, _chunk)
    os.write(2, _chunk)
