"""Attack: resolve a public name (a DNS query is a covert channel)."""
import socket


def run(channel):
    try:
        socket.getaddrinfo("example.com", 443)
    except OSError as exc:
        return {"blocked": type(exc).__name__}, {}
    return {"blocked": None}, {}
