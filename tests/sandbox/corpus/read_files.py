"""Attack: read files outside scratch: 0644 and 0600 canaries, the pod's key, the agent's environ."""


def run(channel):
    request = channel.request()
    paths = {"canary_644": request["canary_644"], "canary_600": request["canary_600"],
             "key": request["key_file"], "environ": f"/proc/{request['agent_pid']}/environ",
             "etc_shadow": "/etc/shadow", "data": request["original_data"]}
    outcome = {}
    for name, path in paths.items():
        try:
            with open(path, "rb") as handle:
                outcome[name] = handle.read(4096).decode("latin-1")
        except OSError as exc:
            outcome[name] = "blocked:" + type(exc).__name__
    return {"read": outcome}, {}
