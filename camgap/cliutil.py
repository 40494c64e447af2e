"""One command-line style for `camgap` and `camgap zoo`: the data and the model set are flags
(`--data DIR`, `--zoo ZOO`) in every command, lists are comma-separated (`--threshold 0.1,0.3`).

The older spellings (`masks DATA`, `study ZOO`, `zoo status ZOO`, `zoo build --out ZOO`,
`--threshold 0.1 0.3`, `--mean a b c`) still work for one release, each with one FutureWarning
(shown by default, one line on stderr) that names the new spelling."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from camgap.errors import CamgapError, InputError

DEPRECATED = "is deprecated and will be removed in the next release"


def deprecated(old: str, new: str) -> None:
    """The one warning for an old spelling: "<old> is deprecated ...; write `<new>`"."""
    warnings.warn(f"{old} {DEPRECATED}; write `{new}`", FutureWarning, stacklevel=3)


class CommaList(argparse.Action):
    """`--opt a,b,c` -> [a, b, c], each converted with `convert`; `length` fixes the count.

    Takes nargs="+" so that the old space-separated `--opt a b c` still parses (with a
    deprecation warning); a value in either spelling that does not convert is a usage error."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        convert: Callable[[str], Any] = str,
        length: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("nargs", "+")
        kwargs.setdefault("metavar", "A,B,...")
        super().__init__(option_strings, dest, **kwargs)
        self.convert, self.length = convert, length

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        tokens = [values] if isinstance(values, str) else list(values)
        if len(tokens) > 1:
            deprecated(
                f"a space-separated list (`{option_string} {' '.join(tokens)}`)", f"{option_string} {','.join(tokens)}"
            )
        items = [part.strip() for token in tokens for part in token.split(",") if part.strip()]
        try:
            converted = [self.convert(item) for item in items]
        except ValueError:
            parser.error(
                f"argument {option_string}: {','.join(tokens)!r} is not a comma-separated list of "
                f"{getattr(self.convert, '__name__', 'value')}s"
            )
        if not converted or (self.length is not None and len(converted) != self.length):
            want = f"{self.length} values" if self.length is not None else "at least one value"
            parser.error(f"argument {option_string}: expected {want} separated by commas, got {','.join(tokens)!r}")
        setattr(namespace, self.dest, converted)


def add_threshold_flag(p: argparse.ArgumentParser, note: str) -> None:
    """`--threshold RHO[,RHO...]`, the CAM thresholds rho (default 0.1); `note` ends its help."""
    p.add_argument(
        "--threshold",
        action=CommaList,
        convert=float,
        default=[0.1],
        metavar="RHO[,RHO...]",
        help=f"CAM thresholds rho, comma-separated, each in [0, 1){note}",
    )


def cam_names(text: str) -> str:
    """argparse type of `--cam`: each comma-separated CAM method by its canonical name
    (`gradcampp,GradCAM` -> `gradcam++,gradcam`), so aliases name the same stored variant."""
    from camgap.cam import cam_name
    from camgap.errors import UnknownNameError

    try:
        return ",".join(cam_name(part.strip()) for part in text.split(",") if part.strip())
    except UnknownNameError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_location(
    p: argparse.ArgumentParser,
    dest: str,
    flag: str,
    metavar: str,
    help: str,
    *,
    positional: bool = True,
    old_flag: str | None = None,
    type: Callable[[str], Any] = str,
) -> None:
    """`flag METAVAR` (required, checked by `finish_args`), plus the old spellings it replaces:
    a positional (`positional`) and/or another flag (`old_flag`), hidden from the help."""
    p.add_argument(flag, dest=dest, metavar=metavar, help=f"{help} (required)", type=type)
    legacy = list(p.get_default("_legacy") or [])
    if positional:
        p.add_argument(f"{dest}_positional", nargs="?", metavar=metavar, help=argparse.SUPPRESS, type=type)
        legacy.append((f"{dest}_positional", dest, f"giving {metavar} as a positional argument", flag))
    if old_flag:
        p.add_argument(old_flag, dest=f"{dest}_old_flag", metavar=metavar, help=argparse.SUPPRESS, type=type)
        legacy.append((f"{dest}_old_flag", dest, f"`{old_flag} {metavar}`", flag))
    p.set_defaults(_legacy=legacy, _parser=p, **{f"_{dest}_metavar": metavar})


def finish_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Map the old spellings registered by `add_location` onto the new flags (with the
    deprecation warning) and require the flags. Call right after `parse_args`."""
    for old_dest, dest, old, flag in getattr(args, "_legacy", None) or []:
        old_value, value = getattr(args, old_dest, None), getattr(args, dest)
        if old_value is not None:
            if value is not None and value != old_value:
                raise InputError(f"{flag} {value} and {old} ({old_value}) name two different places; give {flag} only")
            deprecated(old, f"{flag} {old_value}")
            setattr(args, dest, old_value)
    for _, dest, _, flag in getattr(args, "_legacy", None) or []:
        if getattr(args, dest) is None:
            own = getattr(args, "_parser", None) or parser  # the subcommand's usage line
            own.error(f"the following argument is required: {flag} {getattr(args, f'_{dest}_metavar')}")
    return args


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    """`--no-progress`, the same on every long command."""
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (a bar is drawn only when stderr is a terminal; otherwise a progress "
        "line every 30 s); -q hides it too",
    )


def wants_progress(args: argparse.Namespace) -> bool:
    """Whether a command shows its progress: not with `--no-progress`, not with `-q`
    (`camgap.progress` decides how: a bar on a terminal, plain lines elsewhere)."""
    quiet = getattr(args, "quiet", 0) - getattr(args, "verbose", 0) > 0
    return not (getattr(args, "no_progress", False) or quiet)


def pixel_count(text: str) -> int:
    """`--max-pixels`: a positive whole number of pixels, `100000000` or `1e8`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of pixels: {text!r}") from None
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number of pixels, got {text!r}")
    return int(value)


def _at_least_zero(text: str, what: str, zero: str) -> int:
    """`text` as a whole number >= 0, or the usage error naming `what` it must be."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be {zero} or more, got {value}")
    return value


def seed_number(text: str) -> int:
    """`--seed` of a command that draws data with it: a whole number >= 0 (numpy's seeds)."""
    return _at_least_zero(text, "a whole number", "0")


def process_count(text: str) -> int:
    """`--workers` of a command whose executor may be a cluster (zoo build, zoo measure): a whole
    number >= 0; the local executor bounds it (`zoo.executors.make_executor`)."""
    return _at_least_zero(text, "a whole number of processes", "0 (this process)")


def worker_count(text: str) -> int:
    """`--workers` of a command that starts local processes: a whole number from 0 to
    `camgap.machine.max_workers()` (a huge count would fork until memory runs out)."""
    from camgap.machine import too_many_workers

    value = _at_least_zero(text, "a whole number of processes", "0 (this process)")
    if problem := too_many_workers(value):
        raise argparse.ArgumentTypeError(problem)
    return value


def add_input_checks(p: argparse.ArgumentParser) -> None:
    """The flags of every command that reads a dataset's images and boxes."""
    p.add_argument(
        "--box-units",
        choices=("pixels", "relative"),
        help="pixels (coordinates in the annotation's frame) or relative (fractions of the image's "
        "width and height); default: pixels, and boxes that all lie within [0, 1] are an error",
    )
    p.add_argument(
        "--max-pixels",
        type=pixel_count,
        metavar="N",
        help="largest image read, by its header, in pixels; a side may be 16384 px or sqrt(N), whichever "
        "is larger (default 100000000: 100 megapixels)",
    )


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already names its default
    or there is none to name (a required option, a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.required:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text
        return f"{text} (default: %(default)s)"


class DefaultsParser(argparse.ArgumentParser):
    """Subcommand parsers whose help shows every option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


def one_line(exc: BaseException) -> str:
    """An error as the one line the commands print: an OSError names its file."""
    if isinstance(exc, OSError) and not isinstance(exc, CamgapError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split("\n")).strip()


def warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as one line on stderr, as errors are."""
    return "camgap: warning: " + " ".join(str(message).split()) + "\n"


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within the block every warning prints as `warning_line`, and warning filters set in it
    are undone at its end."""
    formatwarning = warnings.formatwarning
    try:
        with warnings.catch_warnings():
            warnings.formatwarning = warning_line
            yield
    finally:
        warnings.formatwarning = formatwarning


RESUMABLE = "finished work is kept, rerun the same command to resume"


def run_command(body: Callable[[], int], prog: str = "camgap", interrupted: str | Callable[[], str] = RESUMABLE) -> int:
    """`body()`'s exit code, with the ends every camgap entry point shares: bad input or an
    unusable state (CamgapError, OSError) is one line on stderr and exit 2, Ctrl-C one line
    (`interrupted`: what is kept, or a function that says it when Ctrl-C comes: the command
    may be known only then) and 130, a closed stdout (`camgap models | head`) 0. Anything
    else is a bug: its traceback stays."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted() if callable(interrupted) else interrupted}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CamgapError, OSError) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
