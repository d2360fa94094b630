"""Command line: `imgproxy serve | render | check-config` (and more as features land)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import math
import os
import signal
import socket
import sys
import tempfile
import typing
from pathlib import Path

from .config import Config, ConfigError, load_config, unknown_variables
from .errors import BadRequest, ImageProxyError

if typing.TYPE_CHECKING:
    from .options import RenderOptions

SECRET_KEYS = {"key", "keys", "token", "secret_access_key"}
# CLI flag -> canonical query parameter, for `render` (and `url`)
RENDER_FLAGS = (
    "width",
    "height",
    "format",
    "quality",
    "mode",
    "gravity",
    "enlarge",
    "background",
    "dpr",
    "crop",
    "sharpen",
    "blur",
    "preset",
    "version",
    "watermark",
    "max_bytes",
)
QUERY_NAMES = {"width": "scalex", "height": "scaley", "format": "encoding"}  # the names of the seed URLs
FLAG_NAMES = {query: f"--{flag}" for flag, query in QUERY_NAMES.items()} | {flag: f"--{flag}" for flag in RENDER_FLAGS}
LIMIT_KEYS = {"--width": "max_output_width", "--height": "max_output_height"}
OUTPUT_SUFFIXES = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp", "avif": "avif", "gif": "gif"}


def _config(args) -> Config:
    for name, hint in unknown_variables(os.environ):
        print(f"imgproxy: warning: {name} is not a config variable{hint}; it is ignored", file=sys.stderr)
    return load_config(args.config)


def masked(value, key: str = ""):
    if dataclasses.is_dataclass(value):
        return {f.name: masked(getattr(value, f.name), f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: masked(v, k) for k, v in value.items()}
    if key in SECRET_KEYS and value:
        return "***"
    return list(value) if isinstance(value, tuple) else value


@contextlib.contextmanager
def metrics_directory():
    """PROMETHEUS_MULTIPROC_DIR for this run's workers: the operator's (emptied of the last run's
    files) or a fresh temporary directory removed at exit."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        yield
        return
    with tempfile.TemporaryDirectory(prefix="imgproxy-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def risky_settings(config: Config, host: str) -> list[str]:
    """Combinations that let strangers do more than fetch pictures, one line each."""
    risks = []
    keyless = not config.security.signing_keys
    if config.uploads.enabled and not config.uploads.token:
        risks.append(f"uploads.enabled without uploads.token: anyone who reaches {host} can store files")
    if config.sources.remote.allowed_hosts and keyless:
        risks.append("sources.remote.allowed_hosts without security.key: anyone can make this service fetch from them")
    if keyless and not is_loopback(host):
        risks.append(f"no security.key on {host}: every size and format of every source can be requested unsigned")
    return risks


def listen_problem(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on host:port, found before anything is reset or started (a
    second `serve` on a busy port must leave the running server's cache statistics alone)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn picks it
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()}"
    return None


def cmd_serve(args) -> int:
    import functools

    import uvicorn

    from .demo import ensure_demo_images
    from .httpguard import GuardedHttpProtocol

    config = _config(args)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if config.uploads.enabled and not config.uploads.token and not is_loopback(host):
        print(
            f"imgproxy: refusing to accept uploads without a token on {host}: set [uploads] token "
            "(IMGPROXY_UPLOADS__TOKEN) or enabled = false (IMGPROXY_UPLOADS__ENABLED=false)",
            file=sys.stderr,
        )
        return 2
    if (problem := listen_problem(host, port)) is not None:
        print(f"imgproxy: {problem}", file=sys.stderr)
        return 1
    for risk in risky_settings(config, host):
        print(f"imgproxy: warning: {risk}", file=sys.stderr)
    if config.sources.local.generate_demo and config.storage.backend == "local":
        try:
            ensure_demo_images(config.path(config.sources.local.root))
        except OSError as exc:  # a read-only or unwritable root: serve what is there
            print(
                f"imgproxy: warning: sources.local.generate_demo: cannot write {exc.filename or 'the demo images'} "
                f"({exc.strerror or exc}); serving without them",
                file=sys.stderr,
            )
    if args.config:
        os.environ["IMGPROXY_CONFIG"] = str(Path(args.config).resolve())
    # uvicorn ends a SIGTERM'd single-worker run by re-raising the signal; its default action would
    # skip the clean-up below
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with metrics_directory():
        from . import cachetool, logs  # only now: prometheus-client reads the variable at import

        cachetool.reset_statistics(config)
        uvicorn.run(
            "imgproxy.app:create_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=args.workers or config.server.workers,
            # header limits and timeout; uvicorn calls the factory as it would the class
            http=functools.partial(GuardedHttpProtocol, server=config.server),  # type: ignore[arg-type]
            timeout_keep_alive=config.server.keep_alive_timeout,
            limit_concurrency=config.server.limit_concurrency,
            backlog=config.server.backlog,
            log_level=config.log.level,
            log_config=logs.logging_config(config.log),
            access_log=False,  # imgproxy.logs.AccessLog writes the access lines
            server_header=False,
            # in-flight renders may finish, or end with their own 503 at the render timeout, before
            # uvicorn cancels what is left (which would answer 500)
            timeout_graceful_shutdown=math.ceil(config.render.timeout) + 5,
        )
    return 0


def query_from_args(args) -> list[tuple[str, str]]:
    pairs = []
    for flag in RENDER_FLAGS:
        value = getattr(args, flag, None)
        if value is None or value is False:
            continue
        name = QUERY_NAMES.get(flag, flag)
        pairs.append((name, "1" if value is True else str(value)))
    return pairs


def options_from_args(args: argparse.Namespace, config: Config, pairs: list[tuple[str, str]]) -> RenderOptions:
    """The render flags parsed as the server parses a query; errors name the flag as typed and
    the limit that applies (max_output_width, not the parser's outer bound)."""
    from .options import MAX_DIMENSION

    limits = config.limits
    try:
        return config.parse_query(pairs)
    except ImageProxyError as exc:
        param, _, reason = exc.message.partition(": ")
        flag = FLAG_NAMES.get(param)
        if flag is None:
            raise
        key = LIMIT_KEYS.get(flag)
        if key is not None:  # the parser's bound is MAX_DIMENSION; the config's limit is what counts
            limit, value = getattr(limits, key), str(getattr(args, flag[2:], "")).strip()
            if value.isdigit() and int(value) > limit:
                reason = f"{value} is above the limit of {limit} px ([limits] {key})"
            reason = reason.replace(f"..{MAX_DIMENSION}", f"..{limit}")
        raise BadRequest(f"{flag}: {reason}") from None


def cmd_render(args) -> int:
    import asyncio

    from .pipeline import render_original
    from .storage import open_storage

    config = _config(args)
    pairs = query_from_args(args)
    if args.format is None:  # infer from the output name: out.webp -> webp
        suffix = Path(args.output).suffix.lstrip(".").lower()
        if suffix not in OUTPUT_SUFFIXES:
            known = ", ".join(f".{s}" for s in OUTPUT_SUFFIXES)
            raise BadRequest(f"-o {args.output}: unknown image suffix (use {known}, or give --format)")
        pairs.append(("encoding", OUTPUT_SUFFIXES[suffix]))
    options = options_from_args(args, config, pairs)
    fmt = options.encoding if options.encoding not in (None, "auto") else "source"
    storage = open_storage(config)

    async def original():
        return await storage.open(await storage.load(args.source))

    try:
        body, meta = render_original(asyncio.run(original()), options, fmt, config)
    finally:
        storage.close()
    Path(args.output).write_bytes(body)
    print(f"{args.output}: {meta.width}x{meta.height} {meta.content_type} {meta.size} bytes in {meta.render_ms:.0f} ms")
    return 0


def cmd_sign(args) -> int:
    """Sign a URL as given (path and query kept byte for byte, any old sig dropped)."""
    from urllib.parse import urlsplit

    from .signing import sign, split_query

    keys = _config(args).security.signing_keys
    if not keys:
        print("imgproxy: no [security] key configured", file=sys.stderr)
        return 2
    parts = urlsplit(args.url)
    kept, _ = split_query(parts.query)
    query = "&".join(kept)
    signature = "sig=" + sign(parts.path, query, keys[0])
    prefix = f"{parts.scheme}://{parts.netloc}" if parts.netloc else ""
    print(f"{prefix}{parts.path}?{query + '&' if query else ''}{signature}")
    return 0


def cmd_url(args) -> int:
    """Build a /picture URL from a source and render flags (signed when a key is set)."""
    from urllib.parse import quote

    from .signing import signed_url

    config = _config(args)
    pairs = query_from_args(args)
    options_from_args(args, config, pairs)  # the server would refuse what render refuses
    path = "/picture/" + quote(args.source, safe="/:")
    print((args.base or "") + signed_url(path, pairs, config.security.signing_keys))
    return 0


def progress_bar(total: int, stream=sys.stderr):
    """A `[####----] 3/8 name` line redrawn in place on a terminal; silent otherwise."""
    done = 0

    def advance(label: str) -> None:
        nonlocal done
        done += 1
        if stream.isatty():
            filled = 30 * done // max(total, 1)
            end = "\n" if done == total else ""
            stream.write(f"\r[{'#' * filled}{'-' * (30 - filled)}] {done}/{total} {label[-40:]:<40}{end}")
            stream.flush()

    return advance


def cmd_warm(args) -> int:
    """Render presets × formats of stored sources into the cache, as an upload's job does."""
    import asyncio

    from .cache import ResultCache
    from .jobs import plan, warm
    from .pipeline import Renderer

    config = _config(args)
    cache = ResultCache(config.path(config.cache.dir), config.cache)
    renderer = Renderer(config, cache)
    unusable: list[str] = []
    sources: list[str] = []
    tasks = plan(renderer, args.preset or list(config.presets), args.format or config.uploads.pregenerate_formats)

    async def run() -> list[str]:
        for source in dict.fromkeys(args.sources):  # a missing source is one error, not one per variant
            try:
                await renderer.load(source)
                sources.append(source)
            except ImageProxyError as exc:
                unusable.append(f"{source}: {exc.message}")
        return await warm(renderer, sources, tasks, renderer.workers, progress_bar(len(sources) * len(tasks)))

    try:
        errors = asyncio.run(run())
    finally:
        renderer.close()
    total = len(sources) * len(tasks)
    for line in unusable + errors:
        print(f"imgproxy: {line}", file=sys.stderr)
    print(f"warmed {total - len(errors)} of {total} results ({len(sources)} sources x {len(tasks)} variants)")
    return 1 if unusable or errors else 0


def cmd_worker(args) -> int:
    """Run job workers until SIGTERM or SIGINT; a job in hand goes back to the queue on the way out."""
    import asyncio
    import logging

    from .app import make_renderer
    from .jobs import JobQueue

    config = _config(args)
    logging.basicConfig(level=config.log.level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    renderer = make_renderer(config)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        queue = JobQueue(renderer, args.workers)
        await queue.start()
        logging.getLogger("imgproxy.jobs").info("%d job workers on the %s job store", args.workers, config.jobs.backend)
        try:
            await stop.wait()
        finally:
            await queue.stop()
            if renderer.remote is not None:
                await renderer.remote.aclose()

    try:
        asyncio.run(run())
    finally:
        renderer.close()
    return 0


def cmd_jobs_stats(args) -> int:
    import time

    from .jobs import open_store

    config = _config(args)
    store = open_store(config)
    try:
        stats = store.stats(time.time())
    except store.errors as exc:
        print(f"imgproxy: job store ({config.jobs.backend}) unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    for name in ("queued", "running", "failed", "done"):
        print(f"{name:<8} {stats[name]}")
    return 0


def _not_writable(path: Path) -> str | None:
    """Why files cannot be created in `path` (or in the directory it would be created in)."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        return f"{path} is not writable ({exc.strerror})"
    return None


def config_problems(config: Config) -> list[str]:
    """Everything in this config that would stop or degrade serving, each naming its key."""
    from .netguard import compile_host_pattern

    problems = []
    root = config.path(config.sources.local.root)
    local = config.storage.backend == "local"  # else originals and uploads are in the bucket
    if local and not root.exists() and not config.sources.local.generate_demo:
        problems.append(f"sources.local.root: {root} does not exist")
    elif local and root.exists() and not root.is_dir():
        problems.append(f"sources.local.root: {root} is not a directory")
    elif local and root.exists() and not os.access(root, os.R_OK | os.X_OK):
        problems.append(f"sources.local.root: {root} is not readable")
    writable = {"sources.local.root": root} if local and config.sources.local.generate_demo else {}
    if config.cache.enabled:
        writable["cache.dir"] = config.path(config.cache.dir)
    if config.sources.remote.allowed_hosts or not local:  # the originals cache
        writable["sources.remote.cache_dir"] = config.path(config.sources.remote.cache_dir)
    if config.uploads.enabled and local:
        writable["uploads.dir"] = root / config.uploads.dir
    for key, path in writable.items():
        if (why := _not_writable(path)) is not None:
            problems.append(f"{key}: {why}")
    for pattern in config.sources.remote.allowed_hosts:
        try:
            compile_host_pattern(pattern)
        except ValueError as exc:
            problems.append(f"sources.remote.allowed_hosts: {exc}")
    if config.jobs.backend == "redis":
        from .jobs import open_store

        store = open_store(config)
        try:
            store.ping()
        except store.errors as exc:
            problems.append(f"jobs.redis_url: cannot reach Redis ({exc}); uploads would answer 503")
        finally:
            store.close()
    return problems


def cmd_check_config(args) -> int:
    import json

    config = _config(args)
    print(json.dumps(masked(config), indent=2, default=str))
    problems = config_problems(config)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 2 if problems else 0


def cmd_cache_stats(args) -> int:
    from . import cachetool

    print(cachetool.describe(cachetool.stats(_config(args))))
    return 0


def cmd_cache_clear(args) -> int:
    from . import cachetool

    removed = cachetool.clear(_config(args), args.older_than, args.source or [])
    print(f"removed {removed} cached results")
    return 0


def duration(text: str) -> float:
    from .cachetool import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def add_render_flags(parser: argparse.ArgumentParser) -> None:
    for flag in RENDER_FLAGS:
        if flag == "enlarge":
            parser.add_argument("--enlarge", action="store_true")
        else:
            parser.add_argument(f"--{flag}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgproxy", description="Caching image proxy")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help: str, group=sub) -> argparse.ArgumentParser:
        p = group.add_parser(name, help=help)
        p.add_argument("--config", help="config file (default: ./config.toml when present)")
        p.set_defaults(handler=handler)
        return p

    serve = command("serve", cmd_serve, "serve HTTP")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)

    render = command("render", cmd_render, "render one image to a file")
    render.add_argument("source", help="path in the storage ([sources.local] root or the bucket)")
    render.add_argument("-o", "--output", required=True)
    add_render_flags(render)

    sign = command("sign", cmd_sign, "print URL with its signature")
    sign.add_argument("url", help="/picture/… path with query, or a full URL")

    url = command("url", cmd_url, "build a /picture URL (signed when a key is set)")
    url.add_argument("source")
    url.add_argument("--base", help="prefix such as https://img.example.com")
    add_render_flags(url)

    warm_parser = command("warm", cmd_warm, "render presets of stored sources into the cache")
    warm_parser.add_argument("sources", nargs="+", help="paths in the storage ([sources.local] root or the bucket)")
    warm_parser.add_argument("--preset", action="append", help="preset name, repeatable (default: all)")
    warm_parser.add_argument(
        "--format",
        action="append",
        choices=("jpeg", "png", "webp", "avif", "gif", "source"),
        help="output format, repeatable (default: [uploads] pregenerate_formats)",
    )

    worker = command("worker", cmd_worker, "run pre-render job workers ([jobs] backend) until stopped")
    worker.add_argument("--workers", type=positive, default=1, help="jobs at a time in this process (default 1)")

    jobs = sub.add_parser("jobs", help="pre-render jobs: stats").add_subparsers(dest="action", required=True)
    command("stats", cmd_jobs_stats, "jobs queued, running, failed and done", jobs)

    command("check-config", cmd_check_config, "print the effective config (secrets masked) and every problem")

    cache = sub.add_parser("cache", help="result cache: stats, clear").add_subparsers(dest="action", required=True)
    command("stats", cmd_cache_stats, "entries, bytes, hit ratio, oldest entry", cache)
    clear = command("clear", cmd_cache_clear, "remove results: all, or by age and/or source", cache)
    clear.add_argument("--older-than", type=duration, metavar="AGE", help="stored longer ago than AGE (7d, 12h, 30m)")
    clear.add_argument(
        "--source",
        action="append",
        help="a stored path (local or in the bucket) or remote URL whose results go (repeatable)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"imgproxy: config error: {problem}", file=sys.stderr)
        return 2
    except ImageProxyError as exc:
        print(f"imgproxy: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file the command writes or reads: one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"imgproxy: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
