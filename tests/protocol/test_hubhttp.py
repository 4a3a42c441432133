"""protocol.hubhttp against a loopback server that misbehaves: every reply bounded, parsed, typed. Each JSON test
runs on both transports (hubhttp's aiohttp session and hub_oneshot's one connection per request): they must fail
alike, with the same words."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pod_agent.errors import HubMisbehaved, HubRejected, HubUnavailable, ProtocolError
from pod_agent.protocol import IdentityKey
from pod_agent.protocol.hub_api import MAX_REPLY_BYTES, MAX_REPLY_VALUES, HubReply, Ok, PodRegistered
from pod_agent.protocol.hub_oneshot import oneshot_call
from pod_agent.protocol.hubhttp import MAX_ERROR_BYTES, download_blob, hub_session, signed_call

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Ask = Callable[..., Awaitable[Any]]
BLOB = b"weights" * 1000
BLOB_SHA256 = hashlib.sha256(BLOB).hexdigest()


async def _chunked(request: web.Request, chunks: AsyncIterator[bytes]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        async for chunk in chunks:
            await resp.write(chunk)
        await resp.write_eof()
    except (ConnectionError, RuntimeError):
        pass
    return resp


async def _forever(chunk: bytes, *, every_s: float = 0.0) -> AsyncIterator[bytes]:
    while True:
        yield chunk
        await asyncio.sleep(every_s)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """``await serve(handler)``: the URL of a loopback server answering every request with ``handler``."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with hub_session(connect_timeout_s=5) as s:
        yield s


@pytest.fixture(params=["aiohttp", "oneshot"])
def ask(request: pytest.FixtureRequest, session: aiohttp.ClientSession) -> Ask:
    """``await ask(url, total_s=..., method=..., path=..., reply=...)``: one signed JSON call on each transport."""

    async def call(url: str, *, total_s: float = 5.0, method: str = "GET", path: str = "/v1/x",
                   reply: type[HubReply] = PodRegistered) -> Any:
        key = IdentityKey.generate()
        if request.param == "aiohttp":
            return await signed_call(session, key, base=url, method=method, path=path, tls=False, reply=reply,
                                     total_s=total_s)
        return await oneshot_call(key, base=url, method=method, path=path, tls=False, reply=reply, total_s=total_s)

    return call


async def test_a_reply_past_the_cap_is_refused_while_it_streams(serve: Callable[[Handler], Awaitable[str]],
                                                                ask: Ask) -> None:
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        async def counted() -> AsyncIterator[bytes]:
            nonlocal sent
            async for chunk in _forever(b"a" * 65536):
                sent += len(chunk)
                yield chunk
        return await _chunked(request, counted())

    with pytest.raises(HubMisbehaved, match="runs past the 8388608-byte cap"):
        await ask(await serve(endless))
    # It stopped reading near the cap, not at the end of an endless reply.
    assert sent < 4 * MAX_REPLY_BYTES


async def test_a_declared_length_past_the_cap_is_refused_before_reading(
    serve: Callable[[Handler], Awaitable[str]], ask: Ask
) -> None:
    async def declared(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(MAX_REPLY_BYTES + 1)})
        await resp.prepare(request)
        await resp.write(b"{")
        await asyncio.sleep(5)
        return resp

    with pytest.raises(HubMisbehaved, match="declares 8388609 bytes"):
        await ask(await serve(declared), total_s=2)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'{"pod": "\xff\xfe"}', "is not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"pod": "a", "pod": "b"}', "key 'pod' twice"),
        (b"not json", "is not JSON"),
    ],
    ids=["non-utf8", "deep", "duplicate-keys", "not-json"],
)
async def test_an_unparsable_reply_is_the_hub_misbehaving(
    serve: Callable[[Handler], Awaitable[str]], ask: Ask, body: bytes, match: str
) -> None:
    async def bad(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    with pytest.raises(HubMisbehaved, match=match):
        await ask(await serve(bad))


async def test_a_reply_of_too_many_tiny_values_is_refused_before_parsing(
    serve: Callable[[Handler], Awaitable[str]], ask: Ask
) -> None:
    async def tiny_values(request: web.Request) -> web.Response:
        # Under the byte cap, but parsed it would be 2.5 million dicts.
        return web.Response(body=b"[" + b"{}," * 2_500_000 + b"{}]", content_type="application/json")

    with pytest.raises(HubMisbehaved, match=f"holds more than {MAX_REPLY_VALUES} JSON values"):
        await ask(await serve(tiny_values))


async def test_separators_inside_strings_are_not_values(serve: Callable[[Handler], Awaitable[str]],
                                                        ask: Ask) -> None:
    async def wordy(request: web.Request) -> web.Response:
        # One string of a million commas, braces and escaped quotes: one value.
        name = '\\"{[,' * 250_000
        return web.Response(body=f'{{"pod": "p", "key_id": "{"a" * 64}", "new": true, "note": "{name}"}}'.encode(),
                            content_type="application/json")

    assert (await ask(await serve(wordy))).pod == "p"


async def test_a_wrongly_shaped_reply_names_its_fields_but_not_their_values(
    serve: Callable[[Handler], Awaitable[str]], ask: Ask
) -> None:
    async def wrong(request: web.Request) -> web.Response:
        return web.json_response({"pod": ["secret-from-the-hub"], "key_id": "secret-key", "new": "perhaps"})

    with pytest.raises(HubMisbehaved, match=r"not a PodRegistered: pod: string_type; key_id: string_pattern") as caught:
        await ask(await serve(wrong))
    assert "secret" not in str(caught.value)


async def test_a_compressed_reply_is_not_inflated(serve: Callable[[Handler], Awaitable[str]],
                                                  ask: Ask) -> None:
    async def gzipped(request: web.Request) -> web.Response:
        # A few KiB that would inflate past the cap: counted as sent, it is only not JSON.
        return web.Response(body=gzip.compress(b" " * (2 * MAX_REPLY_BYTES)), headers={"Content-Encoding": "gzip"},
                            content_type="application/json")

    with pytest.raises(HubMisbehaved, match="is not UTF-8|is not JSON"):
        await ask(await serve(gzipped))


async def test_a_reply_that_drips_forever_ends_at_the_total_deadline(
    serve: Callable[[Handler], Awaitable[str]], ask: Ask
) -> None:
    async def drip(request: web.Request) -> web.StreamResponse:
        return await _chunked(request, _forever(b" ", every_s=0.1))

    with pytest.raises(HubUnavailable, match=r"did not finish answering GET /v1/x within 1 s"):
        await ask(await serve(drip), total_s=1)


async def test_an_error_reply_is_read_only_up_to_its_cap(serve: Callable[[Handler], Awaitable[str]],
                                                         ask: Ask) -> None:
    async def huge_error(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=400)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"no. " + b"x" * MAX_ERROR_BYTES)
        await asyncio.sleep(5)  # the rest never comes: the client must not wait for it
        return resp

    with pytest.raises(HubRejected, match="hub answered 400 to GET /v1/x: no. xxx") as caught:
        await ask(await serve(huge_error), total_s=3)
    assert caught.value.status == 400 and len(str(caught.value)) < 300


async def test_a_redirect_is_not_followed(serve: Callable[[Handler], Awaitable[str]],
                                         session: aiohttp.ClientSession, ask: Ask,
                                         tmp_path: Path) -> None:
    followed = 0

    async def redirect(request: web.Request) -> web.Response:
        nonlocal followed
        if request.path == "/elsewhere":
            followed += 1
            return web.json_response({"pod": "p", "key_id": "a" * 64, "new": True})
        raise web.HTTPFound("/elsewhere")

    url = await serve(redirect)
    with pytest.raises(HubMisbehaved, match="hub answered 302 to GET /v1/x, a redirect: not followed"):
        await ask(url)
    with pytest.raises(HubMisbehaved, match="302 for blob .*, a redirect"):
        await _fetch(session, url, tmp_path / "w.safetensors")
    assert followed == 0


async def test_over_the_rate_is_an_outage_to_retry_and_other_4xx_a_refusal(
    serve: Callable[[Handler], Awaitable[str]], ask: Ask
) -> None:
    async def limited(request: web.Request) -> web.Response:
        if request.path == "/v1/x":
            return web.json_response(
                {"error": "over this key's request rate"}, status=429, headers={"Retry-After": "1"}
            )
        return web.json_response({"error": "no such task"}, status=404)

    url = await serve(limited)
    with pytest.raises(HubUnavailable, match="hub answered 429 to GET /v1/x: over this key's request rate") as caught:
        await ask(url)
    assert not isinstance(caught.value, HubRejected)
    with pytest.raises(HubRejected, match="hub answered 404 .*no such task"):
        await ask(url, path="/v1/y", reply=Ok)


async def test_an_empty_reply_parses_as_an_empty_object(serve: Callable[[Handler], Awaitable[str]],
                                                        ask: Ask) -> None:
    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=200)

    reply = await ask(await serve(empty), method="POST", reply=Ok)
    assert reply.ok


@pytest.mark.parametrize(
    "reply", [b"HTTP/1.1 200 OK\r\n" + b"X-Pad: y\r\n" * 200_000, b"SSH-2.0-not-a-hub\r\n\r\n"],
    ids=["endless-headers", "not-http"],
)
async def test_a_reply_head_over_its_cap_or_not_http_is_the_hub_failing(ask: Ask, reply: bytes) -> None:
    async def raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(raw, "127.0.0.1", 0)
    async with server:
        with pytest.raises(HubUnavailable):
            await ask(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")


async def test_a_path_that_would_break_the_request_line_is_refused_before_sending() -> None:
    for path in ("/v1/tasks/x\r\nX-Injected: 1", "/v1/tasks/é"):
        with pytest.raises(ProtocolError, match="holds a space, a control or a non-ASCII character"):
            await oneshot_call(IdentityKey.generate(), base="http://127.0.0.1:9", method="GET", path=path, tls=False,
                               reply=Ok, total_s=1)


# -- blobs ----------------------------------------------------------------------------------------


async def _fetch(session: aiohttp.ClientSession, url: str, dest: Path, *, max_bytes: int = len(BLOB),
                 total_s: float = 5.0) -> Path:
    return await download_blob(session, IdentityKey.generate(), base=url, sha256=BLOB_SHA256, dest=dest, tls=False,
                               max_bytes=max_bytes, total_s=total_s)


def _nothing_left(dest: Path) -> bool:
    return not dest.exists() and not dest.with_name(dest.name + ".part").exists()


async def test_a_blob_that_hashes_right_lands_in_place(serve: Callable[[Handler], Awaitable[str]],
                                                       session: aiohttp.ClientSession, tmp_path: Path) -> None:
    async def honest(request: web.Request) -> web.Response:
        return web.Response(body=BLOB)

    dest = tmp_path / "w.safetensors"
    assert await _fetch(session, await serve(honest), dest) == dest
    assert dest.read_bytes() == BLOB and not dest.with_name(dest.name + ".part").exists()


async def test_an_endless_blob_is_cut_at_its_signed_size_and_nothing_is_left(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        return await _chunked(request, _forever(b"\0" * 65536))

    dest = tmp_path / "w.safetensors"
    with pytest.raises(HubMisbehaved, match=f"more of blob {BLOB_SHA256[:12]}... than the {len(BLOB)} bytes expected"):
        await _fetch(session, await serve(endless), dest)
    assert _nothing_left(dest)


async def test_a_blob_declared_past_its_signed_size_is_refused_before_reading(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BLOB + b"more")

    dest = tmp_path / "w.safetensors"
    with pytest.raises(HubMisbehaved, match=f"offers blob .* as {len(BLOB) + 4} bytes"):
        await _fetch(session, await serve(big), dest)
    assert _nothing_left(dest)


async def test_a_blob_with_other_content_is_discarded(serve: Callable[[Handler], Awaitable[str]],
                                                      session: aiohttp.ClientSession, tmp_path: Path) -> None:
    async def forged(request: web.Request) -> web.Response:
        return web.Response(body=BLOB[:-1] + b"!")

    dest = tmp_path / "w.safetensors"
    with pytest.raises(HubMisbehaved, match="hashes to .*; discarded"):
        await _fetch(session, await serve(forged), dest)
    assert _nothing_left(dest)


async def test_a_dripping_blob_is_abandoned_at_its_deadline_and_nothing_is_left(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async def drip(request: web.Request) -> web.StreamResponse:
        return await _chunked(request, _forever(b"w", every_s=0.05))

    dest = tmp_path / "w.safetensors"
    with pytest.raises(HubUnavailable, match="did not deliver blob .* within 1 s"):
        await _fetch(session, await serve(drip), dest, total_s=1)
    assert _nothing_left(dest)


async def test_a_missing_blob_is_rejected_with_the_hub_s_words(serve: Callable[[Handler], Awaitable[str]],
                                                               session: aiohttp.ClientSession, tmp_path: Path) -> None:
    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"error": "no blob here"}, status=404)

    dest = tmp_path / "w.safetensors"
    with pytest.raises(HubRejected, match="hub answered 404 for blob .*: no blob here"):
        await _fetch(session, await serve(missing), dest)
    assert _nothing_left(dest)
