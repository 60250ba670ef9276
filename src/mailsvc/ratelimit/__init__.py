"""The global rate limiter: shared buckets in Redis, and which limits apply to what."""
