"""Messages: accepting them, reading them back, cancelling them."""
