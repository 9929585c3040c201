# Forge the job's outputs from inside the candidate's process: patch the runner's prediction writer, its id
# validation, EOS cutting and the validation image ids (every PreparedData object found in memory), write a forged
# result.json and predictions.json into the working directory, and leave a daemon rewriting them all the time.
# The runner must still report exactly its own predictions for the recorded image ids.
import gc
import json
import os
import time

_FORGED = [7, 7, 7, 7, 7, 2]
_PRED = {"epochs": [{"epoch": 1, "seconds": 0.1, "decode_seconds": 0.1, "train_loss": 0.0,
                     "ids": {"forged-image": _FORGED}}]}
_RES = {"status": "ok", "category": None, "stage": "train", "step": "done", "message": "FORGED", "params": 1,
        "epochs_done": 1, "timings": {}}


def _forge(*_a, **_k):
    for _name, _obj in (("predictions.json", _PRED), ("result.json", _RES)):
        try:
            with open(_name, "w") as _f:
                json.dump(_obj, _f)
        except OSError:
            pass


try:
    import nncaption.netapi.job as _j
    import nncaption.netapi.train as _t
    from nncaption.netapi.data.loader import PreparedData as _PD

    _t.write_json_atomic = _forge
    _j.write_json_atomic = _forge
    _t._cut = lambda row: list(_FORGED)
    _t.Runner._validate_ids = lambda self, header, payloads, batch: None
    _t.decoded_rows = lambda *a, **k: None
    _t.cut_at_eos = lambda row: list(_FORGED)
    for _o in gc.get_objects():
        if isinstance(_o, _PD):
            _o.val_ids = ["forged-image"] * len(_o.val_ids)
    print("NNCAPTION-MARK patched", flush=True)
except Exception as _e:  # noqa: BLE001
    print(f"NNCAPTION-MARK patch-failed {_e!r}", flush=True)

_forge()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            _forge()
            time.sleep(0.005)
    os._exit(0)


def hostile_learn():
    _forge()
