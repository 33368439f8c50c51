"""The `notcat-sort serve` command: check the options and the report, make the token, run uvicorn.

The command itself needs no extra (so that `notcat-sort serve --help` works in any install);
running it imports the serve extra's Starlette and uvicorn, or says which is missing."""

from __future__ import annotations

import ipaddress
import secrets
import signal
import socket
from pathlib import Path

import click
from platformdirs import user_data_dir

from notcat_sort.classify import default_jobs
from notcat_sort.decide import Policy
from notcat_sort.known_cats import KnownCatsError
from notcat_sort.model import default_model_path, load_card
from notcat_sort.serve.corrections import CorrectionsFolder
from notcat_sort.serve.known import KnownCatsFolder, default_known_cats
from notcat_sort.serve.review import ReportError, Review
from notcat_sort.serve.thumbnails import default_thumbnail_cache

DEFAULT_HOST = "127.0.0.1"
SERVE_EXTRA = "pip install 'notcat-sort[serve]'"

EPILOG = """\b
Examples:
  notcat-sort serve                                   # http://127.0.0.1:8765/: check photos by hand
  notcat-sort serve --report ~/Photos/notcat-sort-20261122-101500.csv   # + review and correct that run
  curl -F file=@IMG_1.jpg http://127.0.0.1:8765/api/classify

\b
The page's address, with the token that corrections need, is printed on stdout at start.
A correction moves the photo to the other label's folder, is journalled in the report
(`notcat-sort --undo REPORT` puts it back with the rest of the run) and is kept for training
in --corrections DIR (`python -m training fit --data DIR`).
"""


def default_corrections() -> Path:
    return Path(user_data_dir("notcat-sort")) / "corrections"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """Bind first, so that a taken port is a plain error and the address printed is the real one."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host} port {port}: {error.strerror or error}") from None
    return listener


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--report", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Review this run: its photos by label, the unsure ones first, one click to correct.")
@click.option("--host", help=f"Address to listen on. Default: {DEFAULT_HOST}, this machine only; "
                             "anything else must be given explicitly.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free port.")
@click.option("--corrections", type=click.Path(file_okay=False, path_type=Path),
              help="Where corrections are kept for training (cat/, not-cat/, corrections.csv). "
                   "Default: corrections/ in the user data folder.")
@click.option("--known-cats", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Where the cats named on the review page are kept (a folder per cat, for notcat-sort "
                   "--group-cats --known-cats DIR). Default: known-cats/<library> in the user data folder.")
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="ONNX model with its card (.json) beside it. Default: the shipped model.")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Cat probability from which an image is a cat. Default: the model card's.")
@click.option("--max-upload-mb", type=click.FloatRange(0, min_open=True), default=50, show_default=True,
              help="Refuse uploads larger than this.")
@click.option("-j", "--jobs", type=click.IntRange(1), default=default_jobs, show_default="all cores",
              help="Threads that call the model.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True,
              help="Most uploads classified in one model call when requests queue up.")
def serve(report: Path | None, host: str | None, port: int, corrections: Path | None, known_cats: Path | None,
          model: Path | None,
          threshold: float | None, max_upload_mb: float, jobs: int, batch_size: int) -> None:
    """Serve a local web page and HTTP API to classify photos and, with --report, to review a run."""
    try:
        import uvicorn

        from notcat_sort.serve.app import LOOPBACK_HOSTS, ServeConfig, create_app
    except ImportError as error:
        raise click.UsageError(f"notcat-sort serve needs the serve extra ({error.name} is missing): {SERVE_EXTRA}") from None
    card = load_card(model or default_model_path())
    corrections_folder = CorrectionsFolder((corrections or default_corrections()).absolute())
    try:
        review = Review(report, corrections_folder) if report is not None else None
    except ReportError as error:
        raise click.BadParameter(str(error), param_hint="--report") from None
    if review is not None:
        folder = (known_cats or default_known_cats(list({entry.folder for entry in review.entries}))).absolute()
        try:
            review.remember_names(KnownCatsFolder(folder))
        except KnownCatsError as error:
            raise click.BadParameter(str(error), param_hint="--known-cats") from None
    bind = host or DEFAULT_HOST
    local = _is_loopback(bind)
    if not local:
        click.echo(f"warning: listening on {bind}: anyone who can reach this machine can classify images "
                   "(the review and corrections still need the token)", err=True)
    listener = _listen(bind, port)
    token = secrets.token_urlsafe(18)
    config = ServeConfig(card, Policy(card.threshold if threshold is None else threshold), token, review,
                         max_upload=int(max_upload_mb * 1024 * 1024), workers=jobs, batch_size=batch_size,
                         allowed_hosts=LOOPBACK_HOSTS if local else ("*",), thumbnail_cache=default_thumbnail_cache())
    app = create_app(config)
    shown = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
    base = f"http://{shown}:{listener.getsockname()[1]}"
    click.echo(f"{base}/?token={token}")
    if review is not None:
        click.echo(f"{base}/review?token={token}")
        click.echo(f"reviewing {review.report} ({len(review.entries)} photos); corrections go to "
                   f"{corrections_folder.root}, named cats to {review.known.root if review.known else ''}; Ctrl-C stops", err=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    # uvicorn stops gracefully on SIGINT and SIGTERM, then raises the signal again for the
    # handlers it found: these, so that a requested stop ends with status 0.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda signum, frame: None)
    server.run(sockets=[listener])
    click.echo("stopped", err=True)
