"""Subcommands of the ``fish-fl`` command line, one module each.

Each module holds one plain function with Typer-annotated parameters, which
``sims.cli`` registers, e.g. ``app.command("plot")(plot_command)``.
"""
