"""Inference engines behind one small interface; the backend is chosen by config."""

from services.common.engines.base import Engine, EngineError, create_engine, register_backend

__all__ = ["Engine", "EngineError", "create_engine", "register_backend"]
