"""Moorage: Claude Agent SDK sessions over WebSocket, one sandbox each."""
