"""Application interface and security: chat, guardrail policies and flags, keys, console sessions, usage."""
