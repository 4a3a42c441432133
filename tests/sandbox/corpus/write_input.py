"""Attack: overwrite the task's input (as seen inside, and at its host path)."""


def run(channel):
    outcome = {}
    for name, path in (("inside", channel.input_dir / "model.py"), ("host", channel.request()["host_input"])):
        try:
            with open(path, "a") as handle:
                handle.write("# tampered\n")
            outcome[name] = None
        except OSError as exc:
            outcome[name] = type(exc).__name__
    return {"blocked": outcome}, {}
