"""The Typer command-line interface: it parses and prints; the work is in the pipeline."""
