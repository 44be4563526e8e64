"""`gate serve`'s HTTP server: asyncio and h11 in front of the WSGI app, made to stay up under hostile clients
without a reverse proxy.

Why not an off-the-shelf WSGI server: waitress (the earlier one) reads every body to its end, into memory or a temp
file, before the app runs, so a forged upload cost its whole size on disk before its signature could be refused,
and its 100-connection limit let a slowloris hold the gate. Threaded servers (gunicorn's gthread, cheroot) tie a
thread to a connection while its head trickles in; uvicorn has no deadline for a request's head; hypercorn's WSGI
wrapper holds the whole body in memory. Here:

- a connection is a coroutine, not a thread. A request's head must arrive within `head_seconds`. One address holds
  at most `connections_per_address`; at the cap its oldest connection still sending a head is dropped, so a real
  client still gets in.
- a body over its route's limit (gate.web.limits) is refused on the head, with the gate's JSON error, unread.
- a small body (up to `buffered_body`) is read here before a request thread is taken. A larger one streams to the
  app through `wsgi.input` on a thread of its own pool, at most `streams_per_address` per address, so uploads never
  queue the API, the pages or /healthz behind them.
- every read and write has a deadline: no byte for `idle_seconds`, or a body averaging under `min_rate`, ends it.

h11 does the HTTP/1.1 parsing and framing (a well-kept, pure-Python state machine), so this module holds only the
policy and the WSGI bridge.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import io
import json
import logging
import signal
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes, urlsplit

import h11

from gate.config import HttpLimits as Limits

log = logging.getLogger(__name__)
READ = 64 * 1024
REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class Gone(ConnectionError):
    """The client hung up, stalled past a deadline, or broke the framing; werkzeug reads an OSError from
    `wsgi.input` as a disconnected client (400)."""


class Refusal(Exception):
    """Answer with the gate's JSON error, then close."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    def response(self) -> bytes:
        body = json.dumps({"error": {"code": self.code, "message": self.message}}).encode()
        head = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Error')}", "Content-Type: application/json",
                f"Content-Length: {len(body)}", "Connection: close"]
        if self.retry_after is not None:
            head.append(f"Retry-After: {self.retry_after}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass(eq=False)
class Client:
    address: str
    port: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened: float
    phase: str = "head"  # "head" while waiting for a request's head, "busy" from then until it is answered
    streaming: bool = False
    closed: bool = False


@dataclass(eq=False)
class Body:
    """The progress of one request body, for the rate deadline and its limit."""

    limit: int
    started: float
    received: int = 0
    done: bool = False


@dataclass
class Front:
    app: Callable
    threads: int = 8
    limits: Limits = field(default_factory=Limits)
    body_limit: Callable[[str, str], int] = lambda method, path: 1024 * 1024
    clients: dict[str, list[Client]] = field(default_factory=lambda: defaultdict(list))
    streams: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def __post_init__(self):
        self.request_pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="gate-request")
        self.stream_pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="gate-stream")
        self.open = 0
        self.stopped = False

    async def run(self, host: str, port: int, started: Callable[[], None] | None = None) -> None:
        """Serve until stop(); `started` is called once the port listens."""
        self.loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._connection, host, port, backlog=1024, limit=READ)
        if started is not None:
            started()
        try:
            async with server:
                await self._stopping.wait()
        finally:
            self.stopped = True
            self.request_pool.shutdown(wait=False, cancel_futures=True)
            self.stream_pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        """Stop serving (from any thread)."""
        self.loop.call_soon_threadsafe(self._stopping.set)

    # Connections

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        client = Client(peer[0], peer[1], reader, writer, self.loop.time())
        if not self._admit(client):
            writer.write(Refusal(503, "too_many_connections", "this address has too many connections open; "
                                 "close some and retry", retry_after=5).response())
            await _close(writer)
            return
        try:
            await self._conversation(client)
        except Refusal as refusal:
            await self._refuse(client, refusal)
        except (TimeoutError, Gone, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping; ended, not cancelled, or Python 3.11's streams log it as an error
        except Exception:  # noqa: BLE001 - one connection's fault never takes the server down
            log.exception("connection from %s failed", client.address)
        finally:
            self._release(client)
            await _close(writer)

    def _admit(self, client: Client) -> bool:
        """Count the connection in; at a cap, drop the oldest connection that has not sent its head yet."""
        mine = self.clients[client.address]
        for crowded, pool in ((len(mine) >= self.limits.connections_per_address, mine),
                              (self.open >= self.limits.connections, None)):
            if crowded and not self._evict_oldest_waiting(pool):
                return False
        mine.append(client)
        self.open += 1
        return True

    def _evict_oldest_waiting(self, pool: list[Client] | None) -> bool:
        candidates = pool if pool is not None else [c for group in self.clients.values() for c in group]
        waiting = [c for c in candidates if c.phase == "head"]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.opened)
        self._release(oldest)
        oldest.writer.transport.abort()
        return True

    def _release(self, client: Client) -> None:
        if client.closed:
            return
        client.closed = True
        group = self.clients[client.address]
        group.remove(client)
        if not group:
            del self.clients[client.address]
        self.open -= 1
        if client.streaming:
            self._end_stream(client)

    async def _refuse(self, client: Client, refusal: Refusal) -> None:
        """Answer a refusal and drop what the client still sends for a moment, so the answer is read, not reset."""
        if client.writer.is_closing():
            return
        client.writer.write(refusal.response())
        await self._linger(client)

    async def _linger(self, client: Client) -> None:
        try:
            await asyncio.wait_for(client.writer.drain(), self.limits.linger_seconds)
            if client.writer.can_write_eof():
                client.writer.write_eof()
            deadline = self.loop.time() + self.limits.linger_seconds
            while (left := deadline - self.loop.time()) > 0 and await asyncio.wait_for(client.reader.read(READ), left):
                pass
        except (TimeoutError, ConnectionError, OSError):
            pass

    # Requests

    async def _conversation(self, client: Client) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)
        deadline = client.opened + self.limits.head_seconds
        while True:
            client.phase = "head"
            try:
                event = await self._next_event(client, conn, deadline)
            except h11.RemoteProtocolError as exc:  # answered and closed: no body of it is on its way worth reading
                status = exc.error_status_hint if exc.error_status_hint in REASONS else 400
                code = "headers_too_large" if status == 431 else "request_invalid"
                client.writer.write(Refusal(status, code, f"the request is not valid HTTP/1.1: {exc}").response())
                return
            except Gone:
                if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                    return  # a keep-alive connection that went quiet, or hung up between requests
                client.writer.write(Refusal(408, "request_timeout", "the request's head did not arrive within "
                                            f"{self.limits.head_seconds:g} s").response())
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            client.phase = "busy"
            if not await self._exchange(client, conn, event):
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
            deadline = self.loop.time() + self.limits.head_seconds

    async def _next_event(self, client: Client, conn: h11.Connection, deadline: float):
        while (event := conn.next_event()) is h11.NEED_DATA:
            await self._receive(client, conn, deadline - self.loop.time(), "deadline")
        return event

    async def _receive(self, client: Client, conn: h11.Connection, wait: float, why: str) -> None:
        """Hand h11 the connection's next bytes, waiting at most `wait` seconds for them (Gone past that)."""
        if wait <= 0:
            raise Gone(why)
        try:
            conn.receive_data(await asyncio.wait_for(client.reader.read(READ), wait))
        except TimeoutError:
            raise Gone(why) from None

    async def _exchange(self, client: Client, conn: h11.Connection, request: h11.Request) -> bool:
        """Answer one request; True when the connection may carry another."""
        method = request.method.decode("ascii")
        target = urlsplit(request.target)
        path = unquote_to_bytes(target.path or b"/")
        headers = {name: value for name, value in request.headers}
        chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
        length = int(headers[b"content-length"]) if b"content-length" in headers and not chunked else None
        limit = self.body_limit(method, path.decode("latin-1"))
        if length is not None and length > limit:
            raise Refusal(413, "body_too_large", f"this route takes bodies of at most {limit} bytes; "
                          f"the request declares {length}")
        environ = self._environ(client, request, method, path, target.query)
        body = Body(limit, self.loop.time())
        streamed = chunked and limit > self.limits.buffered_body or (length or 0) > self.limits.buffered_body
        if streamed:
            self._begin_stream(client)
            environ["wsgi.input"] = StreamInput(self, client, conn, body)
            pool = self.stream_pool
        else:
            environ["wsgi.input"] = io.BytesIO(await self._read_body(client, conn, body))
            pool = self.request_pool
        try:
            answered = await self.loop.run_in_executor(pool, self._run_app, client, conn, environ, method)
        finally:
            if streamed:
                self._end_stream(client)
        if not answered:
            return False
        if conn.our_state is h11.DONE and conn.their_state is not h11.DONE:  # answered before reading the body
            await self._linger(client)
            return False
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def _begin_stream(self, client: Client) -> None:
        if self.streams[client.address] >= self.limits.streams_per_address:
            raise Refusal(429, "too_many_streams", f"at most {self.limits.streams_per_address} large bodies at once "
                          "from one address", retry_after=5)
        if sum(self.streams.values()) >= self.threads:
            raise Refusal(503, "busy", "every upload slot is taken; retry shortly", retry_after=5)
        self.streams[client.address] += 1
        client.streaming = True

    def _end_stream(self, client: Client) -> None:
        if client.streaming:
            client.streaming = False
            self.streams[client.address] -= 1
            if not self.streams[client.address]:
                del self.streams[client.address]

    async def _read_body(self, client: Client, conn: h11.Connection, body: Body) -> bytes:
        """A small body, read whole here (the route's limit or buffered_body, whichever is smaller)."""
        cap = min(body.limit, self.limits.buffered_body)
        data = bytearray()
        try:
            while chunk := await self.body_data(client, conn, body):
                data += chunk
                if len(data) > cap:
                    raise Refusal(413, "body_too_large", f"this route takes bodies of at most {cap} bytes")
        except Gone as exc:
            raise Refusal(408, "request_timeout", f"the body did not arrive: {exc}") from None
        return bytes(data)

    async def body_data(self, client: Client, conn: h11.Connection, body: Body) -> bytes:
        """The body's next bytes, b"" at its end. Raises Gone when the client stalls, slows below the minimum
        rate, hangs up or breaks the framing."""
        if body.done:
            return b""
        if conn.they_are_waiting_for_100_continue:
            await self._send(client, conn, [h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")])
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    # Average at least min_rate once the first idle_seconds are up, and never stall idle_seconds.
                    by_rate = body.started + self.limits.idle_seconds + body.received / self.limits.min_rate
                    wait = min(self.limits.idle_seconds, by_rate - self.loop.time())
                    await self._receive(client, conn, wait, "the body arrives too slowly")
                elif isinstance(event, h11.Data):
                    body.received += len(event.data)
                    return bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    body.done = True
                    return b""
                else:
                    raise Gone("the client hung up inside the body")
        except h11.RemoteProtocolError as exc:
            raise Gone(f"the body's framing is invalid: {exc}") from None

    async def _send(self, client: Client, conn: h11.Connection, events: list) -> None:
        for event in events:
            data = conn.send(event)
            if data:
                client.writer.write(data)
        try:
            await asyncio.wait_for(client.writer.drain(), self.limits.idle_seconds)
        except TimeoutError:
            raise Gone("the client does not take the answer") from None

    def call(self, coroutine):
        """Run a coroutine on the server's loop from a request thread and wait for it (its deadlines bound it;
        a server that stops meanwhile ends the wait)."""
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        except RuntimeError:  # the loop is closed
            coroutine.close()
            raise Gone("the server stopped") from None
        while True:
            try:
                return future.result(timeout=1)
            except concurrent.futures.TimeoutError:
                if future.done():  # the coroutine's own TimeoutError, not the wait's
                    raise
                if self.stopped:
                    future.cancel()
                    raise Gone("the server stopped") from None

    # The WSGI bridge (on a request thread)

    def _environ(self, client: Client, request: h11.Request, method: str, path: bytes, query: bytes) -> dict:
        sockname = client.writer.get_extra_info("sockname") or ("", 0)
        environ = {
            "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path.decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"), "SERVER_NAME": str(sockname[0]), "SERVER_PORT": str(sockname[1]),
            "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"), "REMOTE_ADDR": client.address,
            "REMOTE_PORT": str(client.port), "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            "wsgi.input_terminated": True,  # wsgi.input ends where the body does, chunked or not
            "wsgi.file_wrapper": _file_wrapper,
        }
        for name, value in request.headers:
            text = name.decode("latin-1")
            if "_" in text:  # X_Forwarded_For would alias X-Forwarded-For once in the environ: dropped, as nginx does
                continue
            key = text.upper().replace("-", "_")
            key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key
            value = value.decode("latin-1")
            environ[key] = f"{environ[key]}, {value}" if key in environ else value
        return environ

    def _run_app(self, client: Client, conn: h11.Connection, environ: dict, method: str) -> bool:
        """Call the app and send its answer; False when the connection must close."""
        answer = Answer(self, client, conn, head_only=method == "HEAD")
        try:
            iterable = self.app(environ, answer.start_response)
            try:
                for chunk in iterable:
                    answer.write(chunk)
                answer.finish()
            finally:
                if hasattr(iterable, "close"):
                    iterable.close()
            return True
        except (Gone, ConnectionError, asyncio.CancelledError):
            return False
        except Exception:  # noqa: BLE001 - the app's own failure: a 500 if nothing was sent yet, then close
            log.exception("%s %s failed", method, environ.get("PATH_INFO"))
            if not answer.sent:
                try:
                    self.call(self._refuse(client, Refusal(500, "server_error", "the gate failed on this request")))
                except Exception:  # noqa: BLE001 - the client may be gone too
                    pass
            return False


class Answer:
    """start_response and the body's writes, sent through h11 on the server's loop."""

    def __init__(self, front: Front, client: Client, conn: h11.Connection, head_only: bool):
        self.front, self.client, self.conn, self.head_only = front, client, conn, head_only
        self.status: tuple[int, bytes] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.sent = False

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info=None):
        if exc_info is not None and self.sent:
            raise exc_info[1].with_traceback(exc_info[2])
        code, _, reason = status.partition(" ")
        self.status = (int(code), reason.encode("latin-1"))
        self.headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        return self.write

    def _head(self) -> list:
        if self.sent:
            return []
        self.sent = True
        code, reason = self.status
        return [h11.Response(status_code=code, reason=reason, headers=self.headers)]

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        events = self._head() + ([] if self.head_only else [h11.Data(data=chunk)])
        self.front.call(self.front._send(self.client, self.conn, events))

    def finish(self) -> None:
        self.front.call(self.front._send(self.client, self.conn, self._head() + [h11.EndOfMessage()]))


class StreamInput:
    """`wsgi.input` for a streamed body: each read pulls the next bytes from the connection on the server's loop,
    under the body's deadlines, and may return fewer than asked (b"" only at the end). Past the route's limit it
    stops with a 413, as werkzeug does for a declared length."""

    def __init__(self, front: Front, client: Client, conn: h11.Connection, body: Body):
        self.front, self.client, self.conn, self.body = front, client, conn, body
        self._pending = bytearray()

    def _more(self) -> bool:
        chunk = self.front.call(self.front.body_data(self.client, self.conn, self.body))
        if self.body.received > self.body.limit:
            from werkzeug.exceptions import RequestEntityTooLarge

            raise RequestEntityTooLarge(f"this route takes bodies of at most {self.body.limit} bytes")
        self._pending += chunk
        return bool(chunk)

    def _take(self, size: int) -> bytes:
        chunk = bytes(self._pending[:size])
        del self._pending[:size]
        return chunk

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            while self._more():
                pass
            return self._take(len(self._pending))
        if not self._pending:
            self._more()
        return self._take(size)

    def readinto(self, buffer) -> int:
        chunk = self.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def readline(self, size: int = -1) -> bytes:
        while (end := self._pending.find(b"\n")) < 0 and (size is None or size < 0 or len(self._pending) < size):
            if not self._more():
                break
        end = len(self._pending) if end < 0 else end + 1
        return self._take(end if size is None or size < 0 else min(end, size))

    def __iter__(self):
        while line := self.readline():
            yield line


def _file_wrapper(file, block_size: int = 8192):
    """Files (an upload's weights for a remote worker) go out in 1 MiB blocks: one loop round trip each."""
    from werkzeug.wsgi import FileWrapper

    return FileWrapper(file, max(block_size, 1024 * 1024))


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1)
    except (TimeoutError, ConnectionError, OSError):
        pass


def _return_large_buffers() -> None:
    """Make freed large buffers (v1 bodies held for their check, up to 32 MiB each) go back to the OS. After the
    first such free, glibc raises its mmap threshold and keeps later ones in per-thread arenas: under a forged
    v1 flood the server grew to 366 MiB, against 126 MiB with the threshold fixed (two runs of benchmarks.attacks,
    before and after; docs/performance.md)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, glibc's default, now fixed
    except (OSError, AttributeError):
        pass  # not glibc: its allocator has its own policy


def serve(app, host: str, port: int, threads: int) -> None:
    """Serve the gate's Flask app until interrupted, each route held to its body limit (gate.web.limits)."""
    from gate.web.limits import body_limit

    _return_large_buffers()
    limits = app.config["GATE_SETTINGS"].http
    front = Front(app, threads, limits, lambda method, path: body_limit(app, method, path))

    async def until_signalled() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):  # a clean stop, never an exception raised mid-callback
            with contextlib.suppress(ValueError, RuntimeError):  # not the main thread: the caller stops it
                loop.add_signal_handler(signum, front.stop)
        await front.run(host, port)

    asyncio.run(until_signalled())
