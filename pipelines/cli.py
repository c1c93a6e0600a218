"""`i2m2-med`: the command line, a thin shell over the pipelines.

Each command parses its options and calls one function of a pipelines module; library errors
(:class:`i2m2_med.errors.I2M2Error`) become one line on stderr and a non-zero exit code.
``--debug`` (before the command) shows the full traceback instead.

Exit codes: 0 success; 1 usage error or a failure that stops the command; 2 partial failure
(documented per command, e.g. `diagnose` when some studies failed); 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="I2M2 for knee MRI: synthesise, inspect, train, diagnose and ablate.",
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    _state["debug"] = debug


# ---- commands -------------------------------------------------------------------------------
# Each command imports its pipeline lazily so that `i2m2-med --help` stays fast.


@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="A study (h5, DICOM file or folder, NIfTI) or a folder of studies."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
    annotations: Optional[Path] = typer.Option(
        None, "--annotations", help="fastMRI+ knee.csv (labels per slice); knee_file_list.csv beside it is used too."
    ),
    clinical: Optional[Path] = typer.Option(
        None, "--clinical", help="Clinical CSV joined by study id (age, sex, BMI, ...)."
    ),
) -> None:
    """Summarise a study or a folder: format, slices, k-space shape, acquisition, tabular features, labels, what is missing."""
    from pipelines import inspect as pipeline

    raise typer.Exit(pipeline.run(path, as_json=as_json, annotations=annotations, clinical=clinical))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    from i2m2_med.errors import I2M2Error

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        result = app(args=args, standalone_mode=False)
        return int(result or 0)
    except I2M2Error as exc:
        if debug:
            raise
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code)
    except SystemExit as exc:  # click's own usage errors, already printed
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors raised in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return 1
        if isinstance(exc, click.exceptions.Abort):
            print("aborted", file=sys.stderr)
            return 130
        raise


if __name__ == "__main__":
    sys.exit(main())
