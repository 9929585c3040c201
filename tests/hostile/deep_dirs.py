# At import: a directory chain 1,200 levels deep, a symlink loop, a FIFO and a 200 MiB file in the working
# directory; then behave as a normal model. The parent must neither crash nor keep any of it.
import os

_top = os.getcwd()
for _ in range(1200):
    os.mkdir("d")
    os.chdir("d")
os.chdir(_top)
os.symlink(".", "loop")
os.mkfifo("fifo")
with open("big.bin", "wb") as _f:
    for _ in range(200):
        _f.write(b"\0" * (1 << 20))
print("NNCAPTION-MARK deep-dirs-made", flush=True)
