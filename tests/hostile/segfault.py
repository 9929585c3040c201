# Segfault through ctypes in learn.
import ctypes


def hostile_learn():
    ctypes.string_at(0)
