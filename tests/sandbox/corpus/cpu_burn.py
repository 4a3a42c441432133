"""Attack: busy-loop forever (past the CPU-time limit)."""


def run(channel):
    counter = 0
    while True:
        counter += 1
