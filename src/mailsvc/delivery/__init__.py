"""Getting bytes to a provider: the outgoing email, MIME, transports, and what their errors mean."""
