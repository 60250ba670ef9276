"""The embedded default: real PostgreSQL and Redis started locally, and a capture SMTP server."""
