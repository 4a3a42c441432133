"""Attack: write garbage straight onto the frame pipe, bypassing the channel."""


def run(channel):
    out = channel._out
    out.write(b"\xff" * 64)
    out.flush()
    return None
