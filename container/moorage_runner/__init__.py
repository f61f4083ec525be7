"""Moorage agent runner: runs inside a sandbox and drives claude-agent-sdk."""
