"""Attack: flood stdout and stderr (to exhaust the agent's memory or disk)."""
import sys

LINE = "x" * 65535 + "\n"


def run(channel):
    for _ in range(10_000):
        sys.stdout.write(LINE)
        sys.stderr.write(LINE)
    return {"flooded": True}, {}
