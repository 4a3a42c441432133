"""Attack: one numpy array of twice the memory cap."""
import numpy as np


def run(channel):
    array = np.ones(2 * (channel.request()["memory_mb"] << 20) // 8)
    return {"sum": float(array.sum())}, {}
