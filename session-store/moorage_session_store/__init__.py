"""SQLModel implementation of the claude-agent-sdk SessionStore protocol (arrives with issue 3)."""
