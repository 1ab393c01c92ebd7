"""`make bi`: the embedded SQLite warehouse in Datasette, in a browser, for a laptop user.

Serves the warehouse file of the settings in force (SAFEGUARD_CONFIG / SAFEGUARD_* as the CLI) with
dev/datasette/metadata.yaml (two canned queries: today's positive rate per policy, what flipped; the
pipeline's internal tables hidden), on 127.0.0.1 only. Datasette is the `bi` extra.

    python dev/datasette_bi.py [--port 8001] [--no-browser]
"""

from __future__ import annotations

import argparse
import string
import subprocess
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa

METADATA = Path(__file__).resolve().parent / "datasette" / "metadata.yaml"


def warehouse_file(settings) -> Path:
    url = sa.make_url(settings.warehouse_url)
    if url.get_backend_name() != "sqlite":
        raise SystemExit(f"Datasette reads SQLite files; this warehouse is {url.get_backend_name()}: use Superset or "
                         "any SQL client with a read-only role (`safeguard-flow db grant-bi ROLE`)")
    path = Path(url.database).expanduser()
    if not path.is_file():
        raise SystemExit(f"no warehouse at {path}: run `make demo` (or `safeguard-flow db upgrade`) first")
    return path


def render_metadata(settings, db_file: Path, out_dir: Path) -> Path:
    """metadata.yaml with the warehouse's table prefix and database name filled in."""
    text = string.Template(METADATA.read_text()).substitute(
        prefix=settings.warehouse.table_prefix, database=db_file.stem)
    out = out_dir / "metadata.yaml"
    out.write_text(text)
    return out


def command(db_file: Path, metadata: Path, port: int, browser: bool) -> list[str]:
    cmd = [sys.executable, "-m", "datasette", "serve", str(db_file), "--metadata", str(metadata),
           "--host", "127.0.0.1", "--port", str(port), "--setting", "sql_time_limit_ms", "5000"]
    return cmd + (["--open"] if browser else [])


def main(argv: list[str] | None = None) -> int:
    from safeguard_flow.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args(argv)
    settings = load_settings()
    db_file = warehouse_file(settings)
    with tempfile.TemporaryDirectory(prefix="sg-datasette-") as tmp:
        metadata = render_metadata(settings, db_file, Path(tmp))
        print(f"Datasette on http://127.0.0.1:{args.port}/{db_file.stem} (Ctrl-C stops it)")
        try:
            return subprocess.call(command(db_file, metadata, args.port, not args.no_browser))
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
