"""`llmclf serve`: a REST API (FastAPI + uvicorn) and a web page for a saved classifier. See app.py."""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
