# Busy CPU past the timeout, ignoring the polite signals a supervisor might send.
import signal


def hostile_learn():
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP, signal.SIGXCPU):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (OSError, ValueError):
            pass
    x = 0
    while True:
        x = (x * 31 + 7) % 1000003
