# os._exit(0) in learn: the process ends at once, status 0, without predictions.
import os


def hostile_learn():
    os._exit(0)
