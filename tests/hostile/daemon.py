# At import: double-fork a daemon (new session) that writes a heartbeat into the working directory forever,
# then behave as a normal model. The daemon must be gone when the job returns (no process left on the host).
import os
import time

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print("NNCAPTION-MARK daemon-started", flush=True)
        _path = os.path.abspath("heartbeat.txt")
        _n = 0
        while True:
            _n += 1
            try:
                with open(_path, "w") as _f:
                    _f.write(f"{os.getpid()} {_n}\n")
            except OSError:
                pass
            time.sleep(0.05)
    os._exit(0)
time.sleep(0.3)  # let the daemon start beating
