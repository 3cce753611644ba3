"""``neardup review`` (the local web app) and ``neardup report`` (the one-file static report)."""

import ipaddress
import socket
import threading
import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from .typer_app import DEFAULT_DB_PATH, DbOption, app, console, err_console, open_catalog


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@app.command()
def review(
    db: DbOption = DEFAULT_DB_PATH,
    port: Annotated[int, typer.Option(help="Port to serve on (0 = any free port).", min=0, max=65535)] = 8765,
    host: Annotated[str, typer.Option(help="Address to bind. Loopback by default; anything else exposes the "
                                           "catalog's images to your network.")] = "127.0.0.1",
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser tab.")] = False,
) -> None:
    """Serve the review pages on 127.0.0.1 and print the URL: groups, review by keys (A accept, K keep all, ...), judge pairs (calibrates the threshold), clusters, threshold explorer, runs."""
    import uvicorn

    from ..review import create_app

    open_catalog(db).close()  # a clear error now if it is missing, locked or not a catalog
    if port:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host.strip("[]"), port))
            except OSError as exc:
                raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}); try --port 0 for a free port") from None
    else:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host.strip("[]"), 0))
            port = s.getsockname()[1]
    if not is_loopback(host):
        err_console.print(f"[bold yellow]warning:[/] binding {host}: anyone who can reach this machine on port "
                          f"{port} can see the catalog's images and change its decisions (there is no login)")
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    console.print(f"neardup review: {url}  (catalog {db}; Ctrl-C to stop)", highlight=False, soft_wrap=True)
    if not no_browser:
        threading.Timer(1.0, lambda: webbrowser.open(url)).start()
    allowed = None if is_loopback(host) else ["*"]
    uvicorn.run(create_app(db, allowed_hosts=allowed), host=host.strip("[]"), port=port, log_level="warning")


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write (thumbnails are embedded).")] = Path("report.html"),
    db: DbOption = DEFAULT_DB_PATH,
    run: Annotated[int | None, typer.Option(help="Run to show (default: the latest applied run).")] = None,
    groups: Annotated[int, typer.Option(help="How many of the largest groups to include.", min=0)] = 30,
    members: Annotated[int, typer.Option(help="Members shown per group (least similar to the master first).", min=1)] = 24,
) -> None:
    """Write the review pages as one self-contained static HTML file (opens offline, no server)."""
    from ..review import write_report

    with open_catalog(db) as cat:
        if run is not None:
            cat.run(run)  # clear error for an unknown run
        path = write_report(cat, out, max_groups=groups, members_per_group=members, run_id=run)
    size = path.stat().st_size
    console.print(f"wrote {path} ({size / 1e6:.1f} MB)", highlight=False)
