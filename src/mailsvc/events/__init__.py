"""User events: mail that follows what users do (sign-up, activation, password change)."""
