# sys.exit(0) in learn, before any prediction is made.
import sys


def hostile_learn():
    sys.exit(0)
