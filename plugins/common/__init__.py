"""Library code that several built-in plugins share. Not a plugin: it registers nothing.

Built-in plugins never import each other (an import-linter contract says so); what two of them
need lives here, and this package imports no plugin.
"""
