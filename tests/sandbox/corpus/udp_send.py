"""Attack: send a UDP datagram to the agent's socket on 127.0.0.1."""
import socket


def run(channel):
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.sendto(b"exfiltrated", ("127.0.0.1", channel.request()["udp_port"]))
    except OSError as exc:
        return {"blocked": type(exc).__name__}, {}
    return {"blocked": None}, {}
