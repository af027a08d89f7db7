"""The ``fish-fl`` command line: one module per subcommand (``sims/commands``)."""

from __future__ import annotations

import logging
import sys

import typer

from .commands.compare import compare_command
from .commands.distance import distance_command
from .commands.export import apply_command, export_command
from .commands.plot import plot_command
from .commands.prune import prune_command
from .commands.run import run_command
from .commands.sweep import sweep_command
from .commands.tasks import tasks_command

app = typer.Typer(
    name="fish-fl",
    help="Federated training with fixed sparse FISH masks on Flower.",
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("run")(run_command)
app.command("plot")(plot_command)
app.command("compare")(compare_command)
app.command("export")(export_command)
app.command("apply")(apply_command)
app.command("distance")(distance_command)
app.command("sweep")(sweep_command)
app.command("prune")(prune_command)
app.command("tasks")(tasks_command)


def main() -> None:
    """Entry point: errors become one line on stderr and exit status 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for ours in ("fish_fl", "strategies", "clients", "sims"):
        logging.getLogger(ours).setLevel(logging.INFO)
    # Flower prints its records with its own (coloured) handler; passing them on
    # to the root handler as well printed each of them twice.
    logging.getLogger("flwr").propagate = False
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        code = app(standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (ValueError, OSError, RuntimeError) as e:
        typer.echo(f"fish-fl: error: {e}", err=True)
        sys.exit(1)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    if isinstance(code, int) and code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
