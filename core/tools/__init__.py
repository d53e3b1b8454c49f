"""Tools and frameworks: tools, tool calls, agents, chains, untrusted text."""
