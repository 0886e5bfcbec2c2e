"""What every command line of this package shares (`moai-export`, `moai-bench`): errors become
one line and an exit code, and the parity gate's overrides are spelled the same everywhere."""

from __future__ import annotations

import click

from .errors import MoaiError, VerificationFailed

# One meaning per exit code, in every command of `moai-export` and `moai-bench` (README: "Exit codes").
EXIT_OK = 0
EXIT_ERROR = 1  # bad input, or an output that cannot be written: one `error:` line, nothing written
EXIT_USAGE = 2  # the command line itself (click: unknown option, bad choice, missing argument)
EXIT_VERIFICATION_FAILED = 3  # a parity gate refused: nothing published (verify: a candidate failed)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: nothing written


class MoaiGroup(click.Group):
    """Turns MoaiError, and OS errors on writing, into one `error:` line and exit 1; a failed
    parity gate into exit 3; Ctrl-C (and SIGTERM during a write) into 130."""

    interrupted_message = "interrupted: nothing was written"

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VerificationFailed as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(EXIT_VERIFICATION_FAILED)
        except MoaiError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(EXIT_ERROR)
        except OSError as exc:
            from .artifacts import describe_os_error

            click.secho(f"error: {describe_os_error(exc)}", fg="red", err=True)
            ctx.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.secho(self.interrupted_message, fg="yellow", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def gate_options(function):
    """--min-cosine / --max-abs / --min-rank-agreement: each replaces only its own number of the
    gate the artifact's kind and precision get from the gate table (moai_export/gates.py)."""
    function = click.option("--min-rank-agreement", type=float, default=None,
                            help="Gate override: top-10 overlap on the retrieval probe.")(function)
    function = click.option("--max-abs", type=float, default=None,
                            help="Gate override: max absolute difference per component ('inf' turns it off).")(function)
    function = click.option("--min-cosine", type=float, default=None,
                            help="Gate override: minimum cosine to the reference per probe.")(function)
    return function


def overrides_from(min_cosine, max_abs, min_rank_agreement):
    from .gates import GateOverrides

    return GateOverrides(min_cosine=min_cosine, max_abs=max_abs, min_rank_agreement=min_rank_agreement)
