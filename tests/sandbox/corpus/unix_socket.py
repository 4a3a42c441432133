"""Attack: connect to a world-writable path unix socket and an abstract socket of the agent."""
import socket


def run(channel):
    outcome = {}
    for name, address in (
        ("path", channel.request()["unix_path"]),
        ("abstract", "\0" + channel.request()["abstract_name"]),
    ):
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(address)
            sock.sendall(b"exfiltrated")
            sock.close()
            outcome[name] = None
        except OSError as exc:
            outcome[name] = type(exc).__name__
    return {"blocked": outcome}, {}
