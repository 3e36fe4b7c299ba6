"""The `flywheel` command line (Typer + rich)."""
