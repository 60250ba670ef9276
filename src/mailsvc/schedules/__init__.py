"""Recurring jobs per tenant: birthdays, activation reminders and the weekly report."""
