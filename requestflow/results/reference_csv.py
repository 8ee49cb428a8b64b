"""The published ReQuEST-ASPLOS'18 CSV (``shared/data/request-asplos18/hikey960-mobilenets.csv``), read and checked:
every row a ``Row`` (its library, convolution method, model, latencies, accuracies, price and power), or a
UserError naming the file, the line and the column. ``requestflow.results.reference`` turns the rows into result
documents and a read-only reference board.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

from requestflow.errors import UserError

DEFAULT_CSV = Path("request-asplos18") / "hikey960-mobilenets.csv"  # under the shared data folder
COLUMNS = ("platform", "library", "conv_method", "resolution", "width", "latency_min_ms", "latency_mean_ms",
           "latency_center_ms", "repetitions", "top1", "top5", "accuracy_images", "price_usd", "price_date",
           "peak_power_w")
PLATFORM = "Linaro HiKey960 (Mali-G71 MP8 GPU; TF on CPU)"
BOARD_COLUMNS = ("platform", "price_usd", "price_date", "peak_power_w")  # the same in every row


@dataclass(frozen=True)
class Library:
    backend: str
    library: str
    version: str
    commit: str | None
    note: str | None = None
    accuracy_images: int | None = None  # what the published accuracy is really over, when the CSV says otherwise


LIBRARIES = {
    "17.12-48bc34ea": Library("armcl", "arm_compute", "17.12", "48bc34ea",
                              "its Bifrost optimizations mostly disabled by an issue; broken at resolutions other "
                              "than 128 (the published accuracy shows it)"),
    "18.01-f45d5a9b": Library("armcl", "arm_compute", "18.01", "f45d5a9b"),
    "18.03-e40997bb": Library("armcl", "arm_compute", "18.03", "e40997bb"),
    "request-d8f69c13": Library("armcl", "arm_compute", "request fork", "d8f69c13",
                                "the paper's 'dv/dt': a fork of 18.03 with a new direct 1x1 convolution kernel"),
    "tensorflow-1.7": Library("tf", "tensorflow", "1.7", None, "on the CPU", accuracy_images=50_000),
}
CONV_METHODS = {"armcl": ("GEMM", "DIRECT"), "tf": ("n/a",)}


@dataclass(frozen=True)
class Row:
    line: int
    raw: dict[str, str]
    library: Library
    conv_method: str
    model_id: str
    latency_min_s: float
    latency_mean_s: float
    latency_center_s: float
    repetitions: int
    top1: float
    top5: float
    accuracy_images: int
    price_usd: float
    price_date: str
    peak_power_w: float


def default_csv() -> Path:
    from requestflow.board.files import shared_data_dir

    data = shared_data_dir()
    if data is None:
        raise UserError(f"no shared data folder ($REQUESTFLOW_DATA or ../shared/data) to find {DEFAULT_CSV} in: "
                        "give the CSV's path")
    return data / DEFAULT_CSV


def read_csv(path: Path) -> tuple[list[Row], str]:
    """Every row checked, or a UserError naming the file, the line and the column; (rows, the file's sha256)."""
    from requestflow.board.catalogue import get_model
    from requestflow.board.files import sha256_file

    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
        sha256 = sha256_file(path)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    reader = csv.reader(text.splitlines(keepends=True))
    header = next(reader, None)
    if not header:
        raise UserError(f"{path}: empty file, expected the header {','.join(COLUMNS)}")
    missing = [c for c in COLUMNS if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown or len(set(header)) != len(header):
        problem = (f"column {missing[0]!r} is missing" if missing else
                   f"unknown column {unknown[0]!r}" if unknown else "a column appears twice")
        raise UserError(f"{path}:1: {problem}; expected the columns {','.join(COLUMNS)}")
    rows: list[Row] = []
    first: dict[str, tuple[int, str]] = {}
    seen: dict[tuple, int] = {}
    for values in reader:
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise UserError(f"{path}:{line}: {len(values)} fields, expected {len(header)} ({','.join(header)})")
        raw = dict(zip(header, values, strict=True))

        def bad(column: str, expected: str, line=line, raw=raw) -> UserError:
            return UserError(f"{path}:{line}: column {column!r}: expected {expected}, got {raw[column]!r}")

        def number(column: str, minimum: float = 0.0, strict: bool = False, bad=bad, raw=raw) -> float:
            try:
                value = float(raw[column])
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or value < minimum or (strict and value == minimum):
                raise bad(column, f"a number {'>' if strict else '>='} {minimum:g}")
            return value

        def integer(column: str, bad=bad, raw=raw) -> int:
            if not raw[column].strip().isdigit() or int(raw[column]) < 1:
                raise bad(column, "a whole number >= 1")
            return int(raw[column])

        if raw["platform"] != PLATFORM:
            raise bad("platform", repr(PLATFORM))
        library = LIBRARIES.get(raw["library"])
        if library is None:
            raise bad("library", "one of " + ", ".join(LIBRARIES))
        if raw["conv_method"] not in CONV_METHODS[library.backend]:
            raise bad("conv_method", f"{' or '.join(CONV_METHODS[library.backend])} for {raw['library']}")
        if raw["width"] not in ("0.25", "0.5", "0.75", "1.0"):
            raise bad("width", "0.25, 0.5, 0.75 or 1.0")
        if raw["resolution"] not in ("128", "160", "192", "224"):
            raise bad("resolution", "128, 160, 192 or 224")
        model_id = get_model(f"mobilenet-v1-{raw['width']}-{raw['resolution']}").id
        latency = {k: number(f"latency_{k}_ms", strict=True) / 1e3 for k in ("min", "mean", "center")}
        for other in ("mean", "center"):
            if latency["min"] > latency[other]:
                raise bad("latency_min_ms", f"at most latency_{other}_ms ({raw[f'latency_{other}_ms']})")
        top1, top5 = number("top1"), number("top5")
        for column, value in (("top1", top1), ("top5", top5)):
            if value > 1:
                raise bad(column, "a fraction in 0..1")
        if top1 > top5:
            raise bad("top1", f"at most top5 ({raw['top5']})")
        try:
            price_date = dt.date.fromisoformat(raw["price_date"]).isoformat()
        except ValueError:
            raise bad("price_date", "a date YYYY-MM-DD") from None
        row = Row(line=line, raw=raw, library=library, conv_method=raw["conv_method"], model_id=model_id,
                  latency_min_s=latency["min"], latency_mean_s=latency["mean"], latency_center_s=latency["center"],
                  repetitions=integer("repetitions"), top1=top1, top5=top5,
                  accuracy_images=integer("accuracy_images"), price_usd=number("price_usd"), price_date=price_date,
                  peak_power_w=number("peak_power_w"))
        for column in BOARD_COLUMNS:  # figures of the board: one value for the whole file
            earlier = first.setdefault(column, (line, raw[column]))
            if earlier[1] != raw[column]:
                raise bad(column, f"the board's one value, {earlier[1]!r} as on line {earlier[0]}")
        key = (raw["library"], raw["conv_method"], model_id)
        if key in seen:
            raise UserError(f"{path}:{line}: columns 'library', 'conv_method', 'width', 'resolution': the same "
                            f"configuration as line {seen[key]}")
        seen[key] = line
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no data rows after the header")
    return rows, sha256
