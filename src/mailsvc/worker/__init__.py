"""Celery plumbing: the app, queues and roles, the async bridge, publishing, the beat schedule."""
