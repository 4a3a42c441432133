"""Attack: open a TCP connection to the agent's listener on 127.0.0.1 and send bytes."""
import socket


def run(channel):
    try:
        sock = socket.create_connection(("127.0.0.1", channel.request()["tcp_port"]), timeout=2)
        sock.sendall(b"exfiltrated")
        sock.close()
    except OSError as exc:
        return {"blocked": type(exc).__name__}, {}
    return {"blocked": None}, {}
