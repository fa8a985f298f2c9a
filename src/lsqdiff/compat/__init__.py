"""Drop-in replacements for other libraries' least-squares solvers."""
