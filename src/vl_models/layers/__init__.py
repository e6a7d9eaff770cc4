"""Shared building blocks. Nothing here knows about a particular method; `models/` imports from here."""
