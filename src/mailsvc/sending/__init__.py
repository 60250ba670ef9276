"""Sending: the worker side of a message: dispatch, the staged pipeline, claim and record."""
