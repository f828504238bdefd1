"""Refuse request bodies over a size limit with a problem+json 413, before reading them whole."""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import HTTP_ERRORS, ApiError, problem


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            code, detail = HTTP_ERRORS[413]
            return await problem(ApiError(413, code, detail))(scope, receive, send)

        received = 0

        async def counting_receive() -> Message:
            # A chunked body has no Content-Length: count what arrives.
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413)
            return message

        await self.app(scope, counting_receive, send)
