"""Messages: accepting them, delivering them, and reporting on them."""
