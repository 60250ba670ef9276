"""Who is calling: JWT verification, scopes, tenants, and the Principal dependency."""
