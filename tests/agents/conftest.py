"""Fixtures of the agents tests.

- `fake_gemini`: a local HTTP server that speaks the Gemini REST
  `generateContent` protocol and replays a script of answers (JSON text,
  arbitrary text, HTTP errors, slow answers), recording every request so tests
  can assert what the real google-genai client sent.  The SDK (3.x) calls
  `POST {base_url}/v1/models/{model}:generateContent`; any `/{version}/` is
  accepted and recorded.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

# --------------------------------------------------------------------------- fake Gemini server


@dataclass(frozen=True)
class ScriptedReply:
    """One scripted HTTP answer: status, JSON body, and how long to wait before sending it."""

    status: int
    body: dict[str, Any]
    delay_s: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    version: str
    model: str
    action: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def system_text(self) -> str:
        """The system instruction's text."""
        parts = self.body.get("systemInstruction", {}).get("parts", [])
        return "".join(p.get("text", "") for p in parts)

    @property
    def prompt_text(self) -> str:
        """The user prompt's text (all parts of all contents)."""
        return "".join(p.get("text", "") for c in self.body.get("contents", []) for p in c.get("parts", []))


@dataclass
class FakeGemini:
    """A scripted Gemini REST server (see the module docstring).  Unscripted requests get a 500."""

    base_url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    _script: deque[ScriptedReply] = field(default_factory=deque)
    _runner: web.AppRunner | None = None

    # ---- scripting

    def answer_text(
        self,
        text: str,
        *,
        prompt_tokens: int = 120,
        output_tokens: int = 40,
        thoughts_tokens: int = 0,
        finish_reason: str = "STOP",
        delay_s: float = 0.0,
    ) -> None:
        """Queue a 200 answer whose single text part is `text` (any string: JSON or not)."""
        usage: dict[str, int] = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": output_tokens,
            "totalTokenCount": prompt_tokens + output_tokens + thoughts_tokens,
        }
        if thoughts_tokens:
            usage["thoughtsTokenCount"] = thoughts_tokens
        body = {
            "candidates": [
                {"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": finish_reason, "index": 0}
            ],
            "usageMetadata": usage,
            "modelVersion": "fake-gemini",
        }
        self._script.append(ScriptedReply(200, body, delay_s))

    def answer_json(self, payload: Any, **kwargs: Any) -> None:
        """Queue a 200 answer whose text is `payload` as JSON."""
        self.answer_text(json.dumps(payload), **kwargs)

    def error(self, status: int, message: str = "scripted error", *, retry_delay: str | None = None) -> None:
        """Queue a Google-style error answer (`retry_delay` like "2s" adds a `RetryInfo` detail)."""
        names = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
        error: dict[str, Any] = {"code": status, "message": message, "status": names.get(status, "INTERNAL")}
        if retry_delay is not None:
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
        self._script.append(ScriptedReply(status, {"error": error}))

    @property
    def pending(self) -> int:
        """Scripted answers not yet served."""
        return len(self._script)

    # ---- serving

    async def _handle(self, request: web.Request) -> web.Response:
        version = request.match_info["version"]
        model, _, action = request.match_info["target"].partition(":")
        raw = await request.read()
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                version=version,
                model=model,
                action=action,
                headers=dict(request.headers),
                body=json.loads(raw) if raw else {},
            )
        )
        if action != "generateContent":
            return web.json_response(
                {"error": {"code": 404, "message": "unknown action", "status": "NOT_FOUND"}}, status=404
            )
        if not self._script:
            return web.json_response(
                {"error": {"code": 500, "message": "script exhausted", "status": "INTERNAL"}}, status=500
            )
        reply = self._script.popleft()
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        return web.json_response(reply.body, status=reply.status)

    async def start(self) -> None:
        """Listen on 127.0.0.1 on a free port."""
        app = web.Application()
        app.router.add_post("/{version}/models/{target}", self._handle)
        # handler_cancellation: a client that gives up (timeout) cancels the slow handler.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def fake_gemini() -> AsyncIterator[FakeGemini]:
    """A running scripted Gemini server, stopped after the test."""
    server = FakeGemini()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
