"""Configuration: built-in defaults, then `config.toml`, then `IMGPROXY_<SECTION>__<KEY>` variables.

Every section is a frozen dataclass; the loader checks each key's type and range and names the
key in the one-line error it raises, so a bad config stops start-up clearly.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError as ConfigError  # re-exported: callers catch config.ConfigError
from .options import ENCODINGS, GRAVITIES, RenderOptions, parse_options, parse_preset
from .watermark import Overlay, load_overlay

SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
WRITABLE_FORMATS = ("jpeg", "png", "webp", "avif", "gif", "jxl")


class Size(int):
    """Marker type: bytes, given as an integer or a string with a unit ("20MB")."""


def parse_size(value: object, key: str = "size") -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size like 20MB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: size must not be negative")
        return value
    if isinstance(value, str):
        text = value.strip().upper().replace(" ", "")
        number = text.rstrip("KMGTB")
        unit = text[len(number) :] or "B"
        if unit in SIZE_UNITS and number.replace(".", "", 1).isdigit():
            return int(float(number) * SIZE_UNITS[unit])
    raise ConfigError(f"{key}: expected a size like 20MB or a byte count, got {value!r}")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_header_bytes: Size = Size(32 * 1024)
    max_headers: int = 100
    header_timeout: float = 10.0
    keep_alive_timeout: int = 5
    limit_concurrency: int = 1000
    backlog: int = 2048


@dataclass(frozen=True)
class LocalSourceConfig:
    root: str = "images"
    generate_demo: bool = True


@dataclass(frozen=True)
class RemoteSourceConfig:
    allowed_hosts: tuple[str, ...] = ()
    allow_private_addresses: bool = False
    trusted_networks: tuple[str, ...] = ()
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    timeout: float = 20.0
    max_redirects: int = 3
    max_bytes: Size = Size(20 * 1024**2)
    max_fetches: int = 8
    fetch_queue_limit: int = 64
    cache_dir: str = "cache/originals"
    cache_size_limit: Size = Size(1024**3)
    freshness: float = 300.0


@dataclass(frozen=True)
class SourcesConfig:
    local: LocalSourceConfig = field(default_factory=LocalSourceConfig)
    remote: RemoteSourceConfig = field(default_factory=RemoteSourceConfig)


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = True
    dir: str = "cache/results"
    size_limit: Size = Size(1024**3)
    max_age: int = 31536000
    immutable: bool = True
    not_found_max_age: int = 60
    eviction_policy: str = "least-recently-used"
    memory_body_limit: Size = Size(1024**2)
    memory_size: Size = Size(32 * 1024**2)
    min_free_space: Size = Size(1024**3)


@dataclass(frozen=True)
class RenderConfig:
    default_format: str = "source"
    workers: int = 0
    queue_limit: int = 64
    memory_budget: Size = Size(96 * 1024**2)
    kept_decodes: Size = Size(48 * 1024**2)
    timeout: float = 30.0
    reducing_gap: float = 1.0
    auto_reducing_gap: float = 1.5  # quality=auto renders (render.render)
    keep_icc: bool = True
    convert_to_srgb: bool = False
    strip_metadata: bool = True
    jpeg_quality: int = 80
    jpeg_progressive: bool = True
    jpeg_progressive_min_pixels: int = 1_000_000  # smaller outputs: baseline (encode.progressive_jpeg)
    jpeg_subsampling: str = "4:2:0"
    webp_quality: int = 80
    webp_method: int = 4
    avif_quality: int = 60
    avif_speed: int = 9
    png_compress_level: int = 6
    gif_optimize: bool = False
    hidpi_quality: int = 0  # 0: unset, `quality` applies at every dpr
    jxl_quality: int = 82
    jxl_effort: int = 3
    client_hints: bool = False  # Accept-CH on pages, width=auto on /picture (SPEC §11)
    jpeg_encoder: str = "libjpeg"
    auto_quality_target: float = 1.056  # x the distance of jpegli q80 (JPEG, JXL); bench/autotarget.py
    auto_quality_min: int = 30
    auto_quality_max: int = 95
    auto_format: str = "first"
    auto_quality_target_webp: float = 1.18
    auto_quality_target_avif: float = 1.29
    auto_jpeg_encoder: str = "jpegli"  # quality=auto's JPEG encoder (jpeg_encoder's choices)
    auto_avif_speed: int = 8  # quality=auto's AVIF encoder speed (avif_speed's range)
    auto_jpeg_lossless_pass: bool = True  # mozjpeg's lossless pass over the JPEG quality=auto kept


@dataclass(frozen=True)
class LimitsConfig:
    max_source_bytes: Size = Size(50 * 1024**2)
    max_source_pixels: int = 50_000_000
    max_animation_pixels: int = 100_000_000
    max_frames: int = 1024
    max_output_width: int = 4096
    max_output_height: int = 4096


@dataclass(frozen=True)
class SecurityConfig:
    key: str = ""
    keys: tuple[str, ...] = ()
    allowed_widths: tuple[int, ...] = ()  # unsigned access is opt-in
    allowed_source_formats: tuple[str, ...] = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "AVIF", "TIFF", "BMP", "HEIF")
    svg: str = "refuse"

    @property
    def signing_keys(self) -> tuple[str, ...]:
        """First key signs, every key verifies (rotation)."""
        return tuple(k for k in ((self.key,) if self.key else ()) + self.keys if k)


@dataclass(frozen=True)
class UploadsConfig:
    enabled: bool = True
    token: str = ""
    max_bytes: Size = Size(20 * 1024**2)
    dir: str = "uploads"
    allowed_formats: tuple[str, ...] = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "AVIF", "TIFF", "BMP", "HEIF")
    pregenerate_formats: tuple[str, ...] = ("webp", "source")


@dataclass(frozen=True)
class JobsConfig:
    backend: str = "local"
    redis_url: str = ""
    workers_in_server: int = 1
    lease: float = 30.0
    warm_url: str = ""


@dataclass(frozen=True)
class S3StorageConfig:
    endpoint: str = ""
    bucket: str = ""
    prefix: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""
    freshness: float = 60.0
    connect_timeout: float = 2.0
    timeout: float = 10.0


@dataclass(frozen=True)
class StorageConfig:
    backend: str = "local"
    s3: S3StorageConfig = field(default_factory=S3StorageConfig)


@dataclass(frozen=True)
class PlaygroundConfig:
    enabled: bool = True
    open_signing: bool = False


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    level: str = "info"
    access_log: bool = True


@dataclass(frozen=True)
class WatermarkConfig:
    """One `[watermarks.NAME]` table (imgproxy.watermark draws it)."""

    image: str = ""
    position: str = "southeast"
    margin: int = 10
    opacity: float = 1.0
    scale: float = 0.0  # 0: the image's own size
    repeat: bool = False


# Checks beyond the type, per key of a [watermarks.NAME] table
_WATERMARK_RANGES: dict[str, tuple[typing.Callable[[typing.Any], bool], str]] = {
    "image": (bool, "a file path, relative to the config file"),
    "position": (lambda v: v in GRAVITIES, ", ".join(GRAVITIES)),
    "margin": (lambda v: 0 <= v <= 1000, "0..1000 output pixels"),
    "opacity": (lambda v: 0 <= v <= 1, "0..1"),
    "scale": (lambda v: 0 <= v <= 1, "0..1 of the output width (0: the image's own size)"),
}


DEFAULT_PRESETS: dict[str, dict[str, object]] = {
    "thumbnail": {"width": 150, "height": 150, "mode": "crop"},
    "small": {"width": 540},
    "medium": {"width": 768},
    "large": {"width": 1080},
    "xl": {"width": 1200},
}


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    uploads: UploadsConfig = field(default_factory=UploadsConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    log: LogConfig = field(default_factory=LogConfig)
    playground: PlaygroundConfig = field(default_factory=PlaygroundConfig)
    presets: dict[str, dict[str, object]] = field(default_factory=lambda: dict(DEFAULT_PRESETS))
    base_dir: str = "."  # directory relative paths are resolved against (the config file's)
    watermarks: dict[str, Overlay] = field(default_factory=dict)  # loaded from [watermarks.NAME]

    def path(self, relative: str) -> Path:
        return (Path(self.base_dir) / relative).resolve()

    @property
    def watermark_digests(self) -> dict[str, str]:
        """Name -> digest of each watermark's image and settings, what `parse_options` resolves."""
        return {name: overlay.digest for name, overlay in self.watermarks.items()}

    def parse_query(self, pairs: typing.Iterable[tuple[str, str]]) -> RenderOptions:
        """`/picture` query pairs -> RenderOptions under this config's presets, limits, watermarks and
        hidpi quality: the one place the server, the CLI, the jobs and the helpers parse a query."""
        return parse_options(
            pairs,
            self.presets,
            self.limits.max_output_width,
            self.limits.max_output_height,
            self.watermark_digests,
            hidpi_quality=self.render.hidpi_quality or None,
            client_hints=self.render.client_hints,
        )


def _networks_valid(values: tuple[str, ...]) -> bool:
    try:
        for value in values:
            ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _between(low: float, high: float) -> typing.Callable[[object], bool]:
    return lambda v: isinstance(v, (int, float)) and low <= v <= high


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")


def _key_prefix_valid(value: object) -> bool:
    text = str(value)
    return not text.startswith("/") and "\\" not in text and "\x00" not in text and ".." not in text.split("/")


def _endpoint_valid(value: object) -> bool:
    return value == "" or str(value).startswith(("http://", "https://"))


# Checks beyond the type: (section.key) -> (predicate, what is allowed)
_RANGES: dict[str, tuple[typing.Callable[[typing.Any], bool], str]] = {
    "server.port": (lambda v: 0 <= v <= 65535, "0..65535"),
    "server.workers": (lambda v: 1 <= v <= 64, "1..64"),
    "server.max_header_bytes": (_between(1024, 1024**2), "1KB..1MB"),
    "server.max_headers": (_between(8, 1000), "8..1000"),
    "server.header_timeout": (_between(0.001, math.inf), "> 0"),
    "server.keep_alive_timeout": (_between(1, 3600), "1..3600"),
    "server.limit_concurrency": (_between(1, math.inf), ">= 1"),
    "server.backlog": (_between(1, 65535), "1..65535"),
    "render.workers": (lambda v: 0 <= v <= 64, "0..64 (0 = number of cores)"),
    "render.queue_limit": (lambda v: 1 <= v <= 100000, "1..100000"),
    "render.default_format": (
        lambda v: v in WRITABLE_FORMATS + ("source", "auto"),
        "jpeg, png, webp, avif, gif, jxl, source or auto",
    ),
    "render.jpeg_quality": (lambda v: 1 <= v <= 100, "1..100"),
    "render.webp_quality": (lambda v: 1 <= v <= 100, "1..100"),
    "render.avif_quality": (lambda v: 1 <= v <= 100, "1..100"),
    "render.webp_method": (lambda v: 0 <= v <= 6, "0..6"),
    "render.hidpi_quality": (lambda v: 0 <= v <= 100, "0..100 (0 = unset)"),
    "render.avif_speed": (lambda v: 0 <= v <= 10, "0..10"),
    "render.auto_avif_speed": (lambda v: 0 <= v <= 10, "0..10"),
    "render.png_compress_level": (lambda v: 0 <= v <= 9, "0..9"),
    "render.jpeg_subsampling": (lambda v: v in ("4:4:4", "4:2:2", "4:2:0"), "4:4:4, 4:2:2 or 4:2:0"),
    "render.timeout": (lambda v: v > 0, "> 0"),
    "render.reducing_gap": (lambda v: 1.0 <= v <= 4.0, "1.0..4.0"),
    "render.auto_reducing_gap": (lambda v: 1.0 <= v <= 4.0, "1.0..4.0"),
    "render.jpeg_encoder": (lambda v: v in ("libjpeg", "jpegli"), "libjpeg or jpegli"),
    "render.jpeg_progressive_min_pixels": (lambda v: v >= 0, ">= 0"),
    "cache.eviction_policy": (
        lambda v: v in ("least-recently-used", "least-recently-stored", "least-frequently-used"),
        "least-recently-used, least-recently-stored or least-frequently-used",
    ),
    "limits.max_source_pixels": (lambda v: v > 0, "> 0"),
    "limits.max_output_width": (lambda v: v > 0, "> 0"),
    "limits.max_output_height": (lambda v: v > 0, "> 0"),
    "log.format": (lambda v: v in ("text", "json"), "text or json"),
    "log.level": (lambda v: v in ("debug", "info", "warning", "error"), "debug, info, warning or error"),
    "sources.remote.max_redirects": (lambda v: 0 <= v <= 20, "0..20"),
    "sources.remote.max_fetches": (lambda v: isinstance(v, int) and v >= 1, ">= 1"),
    "sources.remote.fetch_queue_limit": (lambda v: isinstance(v, int) and v >= 0, ">= 0"),
    "sources.remote.trusted_networks": (_networks_valid, "CIDR networks like 10.1.0.0/16"),
    "security.allowed_widths": (lambda v: all(w > 0 for w in v), "positive integers"),
    "security.svg": (lambda v: v in ("refuse", "rasterize"), "refuse or rasterize"),
    "jobs.backend": (lambda v: v in ("local", "redis"), "local or redis"),
    "jobs.redis_url": (
        lambda v: isinstance(v, str) and (v == "" or v.split("://")[0] in ("redis", "rediss", "unix")),
        "redis://host:port/db",
    ),
    "jobs.warm_url": (lambda v: v == "" or v.startswith(("http://", "https://")), "empty or an http(s):// URL"),
    "jobs.workers_in_server": (lambda v: isinstance(v, int) and 0 <= v <= 64, "0..64"),
    "jobs.lease": (lambda v: isinstance(v, float) and 4 <= v <= 3600, "4..3600 seconds"),
    "uploads.dir": (
        lambda v: bool(v) and not v.startswith("/") and ".." not in v.split("/") and "\\" not in v,
        "a relative path inside [sources.local] root",
    ),
    "storage.backend": (lambda v: v in ("local", "s3"), "local or s3"),
    "storage.s3.prefix": (_key_prefix_valid, "a key prefix without a leading '/', '..' segments, backslashes or NUL"),
    "storage.s3.endpoint": (_endpoint_valid, "empty (AWS) or an http(s) URL"),
    "storage.s3.freshness": (lambda v: _number(v) >= 0, ">= 0"),
    "storage.s3.connect_timeout": (lambda v: _number(v) > 0, "> 0"),
    "storage.s3.timeout": (lambda v: _number(v) > 0, "> 0"),
    "uploads.pregenerate_formats": (
        lambda v: all(f in WRITABLE_FORMATS + ("source",) for f in v),
        "jpeg, png, webp, avif, gif, jxl or source",
    ),
    "render.jxl_quality": (lambda v: 1 <= v <= 100, "1..100"),
    "render.jxl_effort": (lambda v: 1 <= v <= 9, "1..9"),
    "render.auto_quality_target": (lambda v: 0.01 <= v <= 10, "0.01..10"),
    "render.auto_quality_min": (lambda v: 1 <= v <= 100, "1..100"),
    "render.auto_quality_max": (lambda v: 1 <= v <= 100, "1..100"),
    "render.auto_format": (lambda v: v in ("first", "smallest"), "first or smallest"),
    "render.auto_quality_target_webp": (lambda v: 0.01 <= v <= 10, "0.01..10"),
    "render.auto_quality_target_avif": (lambda v: 0.01 <= v <= 10, "0.01..10"),
    "render.auto_jpeg_encoder": (lambda v: v in ("libjpeg", "jpegli"), "libjpeg or jpegli"),
}


def _convert(value: object, hint: object, key: str) -> object:
    if hint is Size:
        return Size(parse_size(value, key))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(v, item, key) for v in value)
    raise ConfigError(f"{key}: unsupported value {value!r}")  # pragma: no cover - schema bug


_NOT_FROM_FILE = {"presets", "base_dir", "watermarks"}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build(cls: type, data: dict, prefix: str, problems: list[str]) -> object:
    """The section from `data`; each bad key adds a line to `problems` and keeps its default, so
    one pass finds them all."""
    if not isinstance(data, dict):
        problems.append(f"{prefix}: expected a table")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in _NOT_FROM_FILE]
    unknown = sorted(set(data) - {f.name for f in fields})
    moved = {("uploads", "job_workers"): "moved to [jobs] workers_in_server"}
    problems += [f"{_join(prefix, name)}: {moved.get((prefix, name), 'unknown key')}" for name in unknown]
    values = {}
    for f in fields:
        if f.name not in data:
            continue
        key = _join(prefix, f.name)
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, data[f.name], key, problems)
            continue
        try:
            value = _convert(data[f.name], hint, key)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        check = _RANGES.get(key)
        if check and not check[0](value):
            problems.append(f"{key}: {value!r} is not allowed (allowed: {check[1]})")
            continue
        values[f.name] = value
    return cls(**values)


def _env_overrides(environ: typing.Mapping[str, str]) -> dict:
    """IMGPROXY_CACHE__SIZE_LIMIT=2GB -> {"cache": {"size_limit": "2GB"}}.

    Nested sections use more separators: IMGPROXY_SOURCES__LOCAL__ROOT. Values are read as TOML
    values when they parse (numbers, booleans, lists), else taken as strings.
    """
    tree: dict = {}
    for name, raw in environ.items():
        if not name.startswith("IMGPROXY_") or "__" not in name:
            continue
        parts = [p.lower() for p in name[len("IMGPROXY_") :].split("__")]
        if not all(parts):
            raise ConfigError(f"{name}: malformed variable name")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another variable")
        node[parts[-1]] = value
    return tree


# IMGPROXY_ variables that are not config keys
OTHER_VARIABLES = {"IMGPROXY_CONFIG", "IMGPROXY_CORPUS"}


def _variable_names(cls: type, parts: tuple[str, ...] = ()) -> typing.Iterator[str]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in _NOT_FROM_FILE:
            continue
        path = (*parts, f.name.upper())
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _variable_names(hints[f.name], path)
        else:
            yield "IMGPROXY_" + "__".join(path)


def unknown_variables(environ: typing.Mapping[str, str]) -> list[tuple[str, str]]:
    """IMGPROXY_ variables `_env_overrides` skips (no `__`: IMGPROXY_CACHE_SIZE_LIMIT), each with
    a hint naming the variable meant, when one matches with its separators doubled."""
    odd = sorted(n for n in environ if n.startswith("IMGPROXY_") and "__" not in n and n not in OTHER_VARIABLES)
    if not odd:
        return []
    known = {name.replace("__", "_"): name for name in _variable_names(Config)}
    return [(name, f" (did you mean {known[name]}?)" if name in known else "") for name in odd]


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_presets(presets: object, problems: list[str]) -> dict[str, dict[str, object]]:
    if not isinstance(presets, dict) or not all(isinstance(p, dict) for p in presets.values()):
        problems.append("presets: expected [presets.NAME] tables")
        return dict(DEFAULT_PRESETS)
    for name, params in presets.items():
        try:
            parse_preset(name, params)
        except ConfigError as exc:
            problems.append(str(exc))
    return presets


def _load_watermarks(tables: object, base_dir: Path, problems: list[str]) -> dict[str, Overlay]:
    """Each [watermarks.NAME] checked key by key, its image read and decoded now: a missing or
    broken file stops start-up instead of failing requests later."""
    if tables is None:
        return {}
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        problems.append("watermarks: expected [watermarks.NAME] tables")
        return {}
    overlays = {}
    for name, table in tables.items():
        prefix = f"watermarks.{name}"
        before = len(problems)
        settings = typing.cast(WatermarkConfig, _build(WatermarkConfig, table, prefix, problems))
        for key, (allowed, text) in _WATERMARK_RANGES.items():
            value = getattr(settings, key)
            if key in table and not allowed(value):
                problems.append(f"{prefix}.{key}: {value!r} is not allowed (allowed: {text})")
        if "image" not in table:
            problems.append(f"{prefix}.image: required (a file path, relative to the config file)")
        if len(problems) > before:
            continue
        try:
            overlays[name] = load_overlay(name, settings, str(base_dir / settings.image), f"{prefix}.image")
        except ConfigError as exc:
            problems.append(str(exc))
    return overlays


def _check_preset_watermarks(presets: dict[str, dict[str, object]], names: typing.Collection[str]) -> list[str]:
    allowed = ", ".join(sorted(names)) or "none configured"
    return [
        f"presets.{preset}.watermark: unknown watermark {params['watermark']!r} (allowed: {allowed})"
        for preset, params in presets.items()
        if "watermark" in params and params["watermark"] not in names
    ]


def load_config(path: str | os.PathLike | None = None, environ: typing.Mapping[str, str] | None = None) -> Config:
    """`path` None: ./config.toml when present, else the built-in defaults. Env applies on top."""
    environ = os.environ if environ is None else environ
    data: dict = {}
    base_dir = Path.cwd()
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read ({exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML ({exc})") from None
        base_dir = path.resolve().parent
    data = _merge(data, _env_overrides(environ))
    presets = data.pop("presets", None)
    watermark_tables = data.pop("watermarks", None)
    problems: list[str] = []
    config = typing.cast(Config, _build(Config, data, "", problems))
    if config.jobs.backend == "redis" and not config.jobs.redis_url:
        problems.append('jobs.redis_url: required with jobs.backend = "redis"')
    if config.storage.backend == "s3" and not config.storage.s3.bucket:
        problems.append('storage.s3.bucket: required when storage.backend = "s3"')
    if config.render.jpeg_encoder == "jpegli" and (
        config.render.jpeg_progressive or config.render.jpeg_subsampling != "4:2:0"
    ):
        # pyjpegli takes a quality only: refuse settings it would silently ignore
        problems.append(
            'render.jpeg_encoder: "jpegli" writes baseline 4:2:0 only: '
            'set jpeg_progressive = false and jpeg_subsampling = "4:2:0"'
        )
    if config.render.default_format == "avif" and "avif" not in ENCODINGS:  # Pillow has no AVIF codec
        problems.append('render.default_format: "avif" is not available in this build (imgproxy/avif.py)')
    preset_map = dict(DEFAULT_PRESETS) if presets is None else _check_presets(presets, problems)
    watermarks = _load_watermarks(watermark_tables, base_dir, problems)
    names = watermark_tables if isinstance(watermark_tables, dict) else {}  # a broken one is named once
    problems += _check_preset_watermarks(preset_map, names)
    if problems:
        raise ConfigError("; ".join(problems), problems)
    config = dataclasses.replace(config, presets=preset_map, base_dir=str(base_dir), watermarks=watermarks)
    return _cap_nested_originals(config)


def _cap_nested_originals(config: Config) -> Config:
    """Fetched originals kept inside [cache] dir count against its size_limit: they get at most half."""
    remote = config.sources.remote
    if not config.path(remote.cache_dir).is_relative_to(config.path(config.cache.dir)):
        return config
    capped = dataclasses.replace(
        remote, cache_size_limit=Size(min(remote.cache_size_limit, config.cache.size_limit // 2))
    )
    return dataclasses.replace(config, sources=dataclasses.replace(config.sources, remote=capped))
