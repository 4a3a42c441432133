"""Attack: put data on stderr (a print and a traceback quoting a value) hoping it reaches shipped logs."""
import sys


def run(channel):
    secret = channel.request()["secret"]
    print(f"row 17: {secret}", file=sys.stderr)
    raise ValueError(f"could not parse {secret}")
