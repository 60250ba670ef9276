"""Shared plumbing that imports no domain: ids, time, pagination, logging, addresses, headers."""
