"""Attack: look for the agent's secrets in the inherited environment."""
import os


def run(channel):
    return {"environ": dict(os.environ)}, {}
