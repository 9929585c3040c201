# Hostile text: forged progress events (NaN and Infinity, JSON nested 100,000 deep, a 5 MB line, terminal escape
# sequences) appended to the runner's progress file, escape sequences on stderr, then an exception whose text is
# full of escape sequences (window title, clear screen, a fake green "accepted", an 8-bit CSI).
import json
import sys

_ESC = "\x1b]0;pwned\x07\x1b[2J\x1b[32maccepted\x1b[0m\x9b31m\r"


def hostile_learn():
    with open("progress.jsonl", "a") as f:
        f.write('{"event": "batch", "loss": NaN, "epoch": Infinity, "batch": -Infinity}\n')
        f.write('{"event": "deep", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
        f.write("[" * 200_000 + "\n")
        f.write(json.dumps({"event": "done" + _ESC, "message": _ESC * 50, "nested": {"a": [1, 2]}}) + "\n")
        f.write('{"event": "huge", "x": "' + "x" * 5_000_000 + '"}\n')
    print(_ESC * 3, file=sys.stderr, flush=True)
    raise RuntimeError("model broke " + _ESC)
