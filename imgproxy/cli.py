"""Command line: `imgproxy serve | render | check-config` (and more as features land)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from .config import Config, ConfigError, load_config
from .errors import ImageProxyError

SECRET_KEYS = {"key", "keys", "token"}
# CLI flag -> canonical query parameter, for `render` (and `url`)
RENDER_FLAGS = ("width", "height", "format", "quality", "mode", "gravity", "enlarge", "background", "dpr",
                "crop", "sharpen", "blur", "preset", "version")
QUERY_NAMES = {"width": "scalex", "height": "scaley", "format": "encoding"}  # the names of the seed URLs


def _config(args) -> Config:
    return load_config(args.config)


def masked(value, key: str = ""):
    if dataclasses.is_dataclass(value):
        return {f.name: masked(getattr(value, f.name), f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: masked(v, k) for k, v in value.items()}
    if key in SECRET_KEYS and value:
        return "***"
    return list(value) if isinstance(value, tuple) else value


def cmd_serve(args) -> int:
    import uvicorn

    from .demo import ensure_demo_images

    config = _config(args)
    if config.sources.local.generate_demo:
        ensure_demo_images(config.path(config.sources.local.root))
    if args.config:
        os.environ["IMGPROXY_CONFIG"] = str(Path(args.config).resolve())
    uvicorn.run(
        "imgproxy.app:create_app_from_env",
        factory=True,
        host=args.host or config.server.host,
        port=args.port if args.port is not None else config.server.port,
        workers=args.workers or config.server.workers,
        log_level=config.log.level,
        access_log=config.log.access_log,
        server_header=False,
        timeout_graceful_shutdown=int(config.render.timeout),
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


def cmd_render(args) -> int:
    from .options import parse_options
    from .pipeline import render_original
    from .sources import LocalSource

    config = _config(args)
    pairs = query_from_args(args)
    if args.format is None:  # infer from the output name: out.webp -> webp
        suffix = Path(args.output).suffix.lstrip(".").lower()
        if suffix in ("jpg", "jpeg", "png", "webp", "avif", "gif"):
            pairs.append(("encoding", suffix))
    limits = config.limits
    options = parse_options(pairs, config.presets, limits.max_output_width, limits.max_output_height)
    local = LocalSource(config.path(config.sources.local.root), limits.max_source_bytes)
    fmt = options.encoding if options.encoding not in (None, "auto") else "source"
    body, meta = render_original(local.load(args.source), options, fmt, config)
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
    path = "/picture/" + quote(args.source, safe="/:")
    print((args.base or "") + signed_url(path, pairs, config.security.signing_keys))
    return 0


def cmd_check_config(args) -> int:
    import json

    config = _config(args)
    print(json.dumps(masked(config), indent=2, default=str))
    return 0


def add_render_flags(parser: argparse.ArgumentParser) -> None:
    for flag in RENDER_FLAGS:
        if flag == "enlarge":
            parser.add_argument("--enlarge", action="store_true")
        else:
            parser.add_argument(f"--{flag}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgproxy", description="Caching image proxy")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--config", help="config file (default: ./config.toml when present)")
        p.set_defaults(handler=handler)
        return p

    serve = command("serve", cmd_serve, "serve HTTP")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)

    render = command("render", cmd_render, "render one image to a file")
    render.add_argument("source", help="path under [sources.local] root")
    render.add_argument("-o", "--output", required=True)
    add_render_flags(render)

    sign = command("sign", cmd_sign, "print URL with its signature")
    sign.add_argument("url", help="/picture/… path with query, or a full URL")

    url = command("url", cmd_url, "build a /picture URL (signed when a key is set)")
    url.add_argument("source")
    url.add_argument("--base", help="prefix such as https://img.example.com")
    add_render_flags(url)

    command("check-config", cmd_check_config, "print the effective config (secrets masked)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"imgproxy: config error: {exc}", file=sys.stderr)
        return 2
    except ImageProxyError as exc:
        print(f"imgproxy: {exc.message}", file=sys.stderr)
        return 1
