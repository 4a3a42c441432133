"""Attack: report a failure word of the model's choosing (a fact about the data, or an agent's code)."""


def run(channel):
    channel.fail(channel.request()["word"])
