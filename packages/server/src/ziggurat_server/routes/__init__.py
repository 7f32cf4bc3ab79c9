"""HTTP endpoints, one module per group."""

from fastapi import Request

from ..state import ServerState


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state
