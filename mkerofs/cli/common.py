"""What the two command lines share: running a click command, turning its errors into exit
statuses and one-line messages, -d9/--debug, and C-style integers.

Exit statuses (both commands):
  0    success
  1    a failure: the build failed, or a problem was found or an error met while reading
       (MkerofsError, OSError), one line on stderr saying what and where
  2    a usage error (unknown option, bad value, missing argument), one line on stderr
  130  interrupted (Ctrl-C)
  143  terminated (SIGTERM: a CI job's timeout, `kill`): cleaned up as on Ctrl-C
  141  stdout was closed by its reader (`| head`): stop quietly
A Failure carries its own status (mkerofs-read gives 2 for an image it cannot open at all).

Integers are read as mkfs.erofs reads them with strtoull(…, 0): decimal, 0x hex, 0-prefixed
octal (so 010 is 8), with k/m/g multipliers only where mkfs.erofs takes them (sizes such as -b).
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass

import click

from ..errors import MkerofsError
from ..util import parse_c_int

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_BROKEN_PIPE = 141

DEBUG_TRACEBACKS = 9        # -d9: the verbosity that shows tracebacks


class Failure(Exception):
    """A user-facing failure with its exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE):
        super().__init__(message)
        self.status = status


class CInt(click.ParamType):
    """An integer option in C syntax (see the module docstring); `what` names it in errors."""
    name = "integer"

    def __init__(self, what: str, minimum: int | None = 0, maximum: int | None = None,
                 suffixes: bool = False):
        self.what = what
        self.minimum = minimum
        self.maximum = maximum
        self.suffixes = suffixes

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        try:
            number = parse_c_int(value, self.what, self.minimum, self.suffixes)
        except ValueError as err:
            self.fail(str(err), param, ctx)
        if self.maximum is not None and number > self.maximum:
            self.fail(f"invalid {self.what} {value!r}", param, ctx)
        return number


# options both commands take, spelled and checked alike
OFFSET = CInt("offset")             # mkfs.erofs's --offset takes no k/m/g
UID = CInt("uid")
GID = CInt("gid")
UID_OFFSET = CInt("uid offset")
GID_OFFSET = CInt("gid offset")
DEBUG_LEVEL = CInt("debug level", maximum=DEBUG_TRACEBACKS)


@dataclass
class RunState:
    """What the options tell the runner (click's ctx.obj)."""
    debug: bool = False


def _note_debug(ctx: click.Context, param: click.Parameter, value):
    if value is True or (value is not None and value is not False
                         and value >= DEBUG_TRACEBACKS):
        state = ctx.find_object(RunState)
        if state is not None:
            state.debug = True
    return value


def debug_options(expose_level: bool = False, hidden: bool = False):
    """-d# (verbosity; 9 shows tracebacks on errors) and --debug (the same as -d9)."""
    def decorate(func):
        func = click.option("--debug", "debug_flag", is_flag=True, expose_value=False,
                            hidden=hidden, callback=_note_debug,
                            help="show tracebacks on errors (as -d9)")(func)
        return click.option("-d", "debug", metavar="#", type=DEBUG_LEVEL, hidden=hidden,
                            expose_value=expose_level, callback=_note_debug,
                            help="verbosity 0-9; 9 also shows tracebacks on errors")(func)
    return decorate


def describe(err: BaseException) -> str:
    """The one-line message for an error: an OSError as 'FILE: reason'."""
    if isinstance(err, OSError) and not isinstance(err, MkerofsError):
        where = f"{os.fsdecode(err.filename)}: " if err.filename else ""
        return f"{where}{err.strerror or err}"
    return str(err)


def run(command: click.Command, prog: str, argv: list[str] | None = None,
        status_of: dict[type, int] | None = None) -> int:
    """Run a click command on argv and return its exit status (the command's own return value
    if it is an int); every expected error ends as one line on stderr, prefixed with prog.
    `status_of` gives some error types a status of their own (else EXIT_FAILURE)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    completing = completion_request(prog)
    if completing is not None:
        from click import shell_completion     # (loaded only when a shell completes)
        return shell_completion.shell_complete(command, {}, prog, *completing)
    replaced = _terminate_as_interrupt()
    try:
        return _run_command(command, prog, argv, status_of)
    finally:
        if replaced is not None:
            signal.signal(signal.SIGTERM, replaced)


def _run_command(command: click.Command, prog: str, argv: list[str],
                 status_of: dict[type, int] | None) -> int:
    state = RunState()
    try:
        with command.make_context(prog, argv, obj=state) as ctx:
            result = command.invoke(ctx)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except Terminated:
        return _say(prog, "terminated", EXIT_TERMINATED)
    except (click.exceptions.Abort, KeyboardInterrupt):
        return _say(prog, "interrupted", EXIT_INTERRUPTED)
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else prog
        return _say(prog, f"{exc.format_message()} (try '{where} --help')", EXIT_USAGE)
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except (Failure, MkerofsError, OSError) as exc:
        if state.debug:
            import traceback                    # (loaded only for -d9's tracebacks)
            traceback.print_exc()
        status = next((s for kind, s in (status_of or {}).items() if isinstance(exc, kind)),
                      getattr(exc, "status", EXIT_FAILURE))
        return _say(prog, describe(exc), status)
    return result if isinstance(result, int) else EXIT_OK


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the command's process: what a build does on Ctrl-C (its temporary
    image removed, an image it increments restored, its forked processes killed and reaped)
    it then does too.  Without it SIGTERM would end the process at once, leaving the temporary
    image and compression workers that hold its stdout and stderr (a caller that reads them
    waits for ever)."""


def _terminate_as_interrupt():
    """Raise Terminated on SIGTERM in this process (not in the processes a build forks: they
    inherit the handler, and die of the signal as before).  Returns the handler it replaced."""
    owner = os.getpid()

    def on_sigterm(signum, frame):
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()
    try:
        return signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:              # (not the main thread: an API caller's thread)
        return None


def completion_request(prog: str) -> tuple[str, str] | None:
    """(variable, instruction) when the shell asks for completion, as click's own entry point
    reads it: _MKEROFS_COMPLETE=bash_source prints the bash script (zsh_source, fish_source
    too); the script then calls back with bash_complete and the words typed so far."""
    var = "_" + prog.replace("-", "_").upper() + "_COMPLETE"
    instruction = os.environ.get(var)
    return (var, instruction) if instruction else None


def _say(prog: str, message: str, status: int) -> int:
    click.echo(f"{prog}: {message}", err=True)
    return status


def _quiet_broken_pipe() -> int:
    """The reader went away (`| head`): stop without a traceback or a flush error at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE
