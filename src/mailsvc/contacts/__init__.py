"""Contacts: the people a tenant mails on a schedule, keyed by email address."""
