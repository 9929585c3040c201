# Sleeps forever in learn.
import time


def hostile_learn():
    while True:
        time.sleep(3600)
