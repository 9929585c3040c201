# Memory bomb in learn: allocate and touch 256 MiB blocks until something gives.
def hostile_learn():
    hoard = []
    while True:
        hoard.append(bytearray(256 * 1024 * 1024))
