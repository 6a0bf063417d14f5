"""checkpoint -> an OpenAI-compatible server and a chat page: the routes (app.py), the continuous-batching
decode thread (batcher.py), and `serve`, which runs them on uvicorn (server.py)."""

from bladegpt.serve.server import serve

__all__ = ["serve"]
