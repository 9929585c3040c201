# In learn: write a forged "ok" result.json and a huge predictions.json (80 MiB, an unknown image id), then SIGKILL
# the runner (the candidate's parent) so that it cannot overwrite them, and wait. No score may come of it, and the
# parent must read at most its cap of the file.
import json
import os
import signal
import time


def hostile_learn():
    with open("result.json", "w") as f:
        json.dump({"status": "ok", "category": None, "stage": "train", "step": "done", "message": "FORGED",
                   "epochs_done": 1, "params": 1, "timings": {}}, f)
    with open("predictions.json", "w") as f:
        f.write('{"epochs": [{"epoch": 1, "seconds": 1, "decode_seconds": 1, "train_loss": 0, '
                '"ids": {"unknown-image": [4, 5, 2]}')
        chunk = " " * (1 << 20)
        for _ in range(80):
            f.write(chunk)
        f.write("}]}")
    print("NNCAPTION-MARK forged", flush=True)
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(120)
