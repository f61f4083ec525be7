"""Sandbox backends behind one contract (``base.SandboxBackend``)."""
