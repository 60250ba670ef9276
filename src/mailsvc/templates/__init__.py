"""Email templates: the Jinja2 sandbox that renders them, the built-ins, and tenants' own."""
