"""Attack: one torch tensor of twice the memory cap (torch fails it with a RuntimeError, not MemoryError)."""
import torch


def run(channel):
    tensor = torch.ones(2 * (channel.request()["memory_mb"] << 20) // 4)
    return {"sum": float(tensor.sum())}, {}
