"""Tools: consumers list them and call directly those their role allows (sensitive ones only operators,
unless ESPALIER_TOOL_ROLES names them); the console's tool playground is this call."""

from __future__ import annotations

from typing import Any

import anyio
from litestar import Request, get, post
from litestar.params import FromPath, JSONBody

from espalier.api.guards import CurrentPrincipal, access


@get(
    "/api/tools",
    opt=access("user"),
    tags=["tools"],
    sync_to_thread=True,
    summary="Registered tools: name, description, JSON Schema of the arguments, plugin",
)
def list_tools(request: Request) -> dict[str, Any]:
    return {"tools": request.app.state.platform.toolbox.describe()}


@post(
    "/api/tools/{name:str}/invoke",
    opt=access("user"),
    tags=["tools"],
    status_code=200,
    summary="Call a tool with a JSON object of its arguments (checked against its schema)",
)
async def invoke_tool(
    request: Request, name: FromPath[str], data: JSONBody[dict[str, Any]], principal: CurrentPrincipal
) -> dict[str, Any]:
    toolbox = request.app.state.platform.toolbox
    call = await anyio.to_thread.run_sync(lambda: toolbox.invoke(name, data, by=principal))
    return {
        "tool": call.tool,
        "arguments": call.arguments,
        "output": call.result.output,
        "data": call.result.data,
        "is_error": call.result.is_error,
        "duration_ms": call.duration_ms,
    }


ROUTES = [list_tools, invoke_tool]
