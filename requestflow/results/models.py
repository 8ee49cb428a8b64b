"""The results schema as SQLAlchemy 2 models. Alembic migrations in ``sql/migrations`` create exactly this
(``alembic check`` in the tests finds no drift); the views are in ``sql/views``.

Shape (Conbench-like): dimensions deduplicated by a unique key (boards, platform snapshots, library builds, models,
weights, datasets, sweeps); ``points`` keyed by the point identity hash; ``results`` one row per loaded document
(keyed by the document's hash: loading twice changes nothing), with the document itself minus its bulky arrays;
raw ``samples``, ``accuracy``, per-image ``predictions`` and ``errors`` beside it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    REAL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SHA = String(64)

NAMING = {"ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
          "ck": "ck_%(table_name)s_%(constraint_name)s",
          "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s"}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Board(Base):
    __tablename__ = "boards"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(Text, server_default="local", comment="local, ssh or reference (read-only)")
    price_usd: Mapped[float | None] = mapped_column(Numeric(12, 2))
    price_date: Mapped[dt.date | None] = mapped_column(Date)
    service_life_years: Mapped[float] = mapped_column(Float, server_default="3",
                                                      comment="for cost per image: price / service life")
    peak_power_w: Mapped[float | None] = mapped_column(Float, comment="for energy_est_j, an upper bound")
    read_only: Mapped[bool] = mapped_column(Boolean, server_default="false")
    info: Mapped[dict] = mapped_column(JSONB, server_default="{}")
    __table_args__ = (CheckConstraint("service_life_years > 0", name="service_life_positive"),)


class PlatformSnapshot(Base):
    __tablename__ = "platform_snapshots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    board_id: Mapped[int] = mapped_column(ForeignKey("boards.id"))
    sha256: Mapped[str] = mapped_column(SHA, unique=True, comment="hash of board + the machine's static description")
    cpu_model: Mapped[str | None] = mapped_column(Text)
    arch: Mapped[str | None] = mapped_column(Text)
    os: Mapped[str | None] = mapped_column(Text)
    machine: Mapped[dict] = mapped_column(JSONB)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LibraryBuild(Base):
    __tablename__ = "library_builds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(SHA, unique=True)
    backend: Mapped[str] = mapped_column(Text)
    library: Mapped[str | None] = mapped_column(Text)
    version: Mapped[str | None] = mapped_column(Text)
    info: Mapped[dict] = mapped_column(JSONB, server_default="{}")


class Model(Base):
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(Text, primary_key=True, comment="mobilenet-v1-<width>-<resolution>")
    width: Mapped[float] = mapped_column(Float)
    resolution: Mapped[int] = mapped_column(Integer)
    macs: Mapped[int] = mapped_column(BigInteger)
    params: Mapped[int] = mapped_column(BigInteger)


class Weights(Base):
    __tablename__ = "weights"
    sha256: Mapped[str] = mapped_column(SHA, primary_key=True)
    format: Mapped[str] = mapped_column(Text)
    random: Mapped[bool] = mapped_column(Boolean)
    release: Mapped[str | None] = mapped_column(Text)
    source_precision: Mapped[str | None] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    info: Mapped[dict] = mapped_column(JSONB, server_default="{}")


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(Text, unique=True, comment="file_list_sha256, or 'synthetic'")
    synthetic: Mapped[bool] = mapped_column(Boolean)
    image_count: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str | None] = mapped_column(Text)
    val_txt_sha256: Mapped[str | None] = mapped_column(SHA)


class Sweep(Base):
    __tablename__ = "sweeps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(Text, unique=True, comment="the Airflow run id (or a name given to load)")
    dag_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    info: Mapped[dict] = mapped_column(JSONB, server_default="{}")


class PointFailure(Base):
    """A point of a sweep that produced no result document: the board was unreachable, the runner was killed or
    crashed. Written by the controller once the task's retries are spent, so that every point of a sweep is
    stored, with a result or with its error."""

    __tablename__ = "point_failures"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id"), index=True)
    board_id: Mapped[int] = mapped_column(ForeignKey("boards.id"))
    point: Mapped[dict] = mapped_column(JSONB, comment="the point as the sweep planned it (model, backend, mode...)")
    error_type: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    failed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Point(Base):
    __tablename__ = "points"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    point_id: Mapped[str] = mapped_column(SHA, unique=True, comment="requestflow.results.identity.point_id")
    accuracy_key: Mapped[str] = mapped_column(SHA, index=True,
                                              comment="joins performance to the accuracy of the same configuration")
    board_id: Mapped[int] = mapped_column(ForeignKey("boards.id"), index=True)
    library_build_id: Mapped[int] = mapped_column(ForeignKey("library_builds.id"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    weights_sha256: Mapped[str] = mapped_column(ForeignKey("weights.sha256"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    backend: Mapped[str] = mapped_column(Text)
    variant: Mapped[dict] = mapped_column(JSONB)
    precision: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(Text)
    batch_size: Mapped[int] = mapped_column(Integer)
    threads: Mapped[int] = mapped_column(Integer)
    cpu_affinity: Mapped[list[int]] = mapped_column(ARRAY(Integer))
    preprocessing: Mapped[dict] = mapped_column(JSONB)
    identity: Mapped[dict] = mapped_column(JSONB, comment="the exact object hashed into point_id")
    __table_args__ = (CheckConstraint("mode IN ('performance', 'accuracy')", name="mode_known"),
                      # the tf points that can be an accuracy point's reference (migration 0013)
                      Index("ix_points_reference_group", "weights_sha256", "precision", "dataset_id"))


class Result(Base):
    __tablename__ = "results"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    document_sha256: Mapped[str] = mapped_column(SHA, unique=True, comment="loading the same document twice is a no-op")
    point_id: Mapped[int] = mapped_column(ForeignKey("points.id"), index=True)
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id"), index=True)
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("platform_snapshots.id"))
    status: Mapped[str] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    schema_version: Mapped[int] = mapped_column(Integer)
    requestflow_version: Mapped[str] = mapped_column(Text)
    repetitions: Mapped[int | None] = mapped_column(Integer)
    warmup: Mapped[int | None] = mapped_column(Integer)
    document: Mapped[dict] = mapped_column(JSONB, comment="the whole document but predictions and raw samples")
    loaded_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    __table_args__ = (CheckConstraint("status IN ('ok', 'failed')", name="status_known"),
                      Index("ix_results_point_started", "point_id", "started_at"))


class Performance(Base):
    __tablename__ = "performance"
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), primary_key=True)
    n: Mapped[int] = mapped_column(Integer)
    min_s: Mapped[float] = mapped_column(Float)
    median_s: Mapped[float] = mapped_column(Float)
    mean_s: Mapped[float] = mapped_column(Float)
    p90_s: Mapped[float] = mapped_column(Float)
    p99_s: Mapped[float] = mapped_column(Float)
    max_s: Mapped[float | None] = mapped_column(Float)
    stdev_s: Mapped[float] = mapped_column(Float)
    throughput_ips: Mapped[float | None] = mapped_column(Float)


class Sample(Base):
    __tablename__ = "samples"
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), primary_key=True)
    i: Mapped[int] = mapped_column(Integer, primary_key=True, comment="repetition index, 0-based")
    seconds: Mapped[float] = mapped_column(Float)


class Accuracy(Base):
    __tablename__ = "accuracy"
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), primary_key=True)
    n: Mapped[int] = mapped_column(Integer)
    top1: Mapped[float] = mapped_column(Float)
    top5: Mapped[float] = mapped_column(Float)
    failed_count: Mapped[int] = mapped_column(Integer)


class Prediction(Base):
    __tablename__ = "predictions"
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), primary_key=True)
    image: Mapped[str] = mapped_column(Text, primary_key=True)
    label: Mapped[int] = mapped_column(SmallInteger)
    top5: Mapped[list[int]] = mapped_column(ARRAY(SmallInteger))
    scores: Mapped[list[float]] = mapped_column(ARRAY(REAL))


class Error(Base):
    __tablename__ = "errors"
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), primary_key=True)
    type: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)


METRICS_CHECKED = "metric IN ('latency', 'top1', 'top5')"


class RegressionAck(Base):
    """An acknowledged step change: the level of ``result_id`` is accepted as the point's new normal for
    ``metric``. Detections of the point and metric compare a later result only with results from this one on, and
    the detections up to this result are marked acknowledged (``regression_detections.ack_id``)."""

    __tablename__ = "regression_acks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    point_id: Mapped[int] = mapped_column(ForeignKey("points.id"), index=True)
    metric: Mapped[str] = mapped_column(Text, comment="latency, top1 or top5")
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"),
                                           comment="the accepted result: later results are compared from it on")
    reason: Mapped[str] = mapped_column(Text)
    acknowledged_by: Mapped[str] = mapped_column(Text)
    acknowledged_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    __table_args__ = (CheckConstraint(METRICS_CHECKED, name="metric_known"),
                      CheckConstraint("length(btrim(reason)) > 0", name="reason_given"),
                      Index("ux_regression_acks_point_metric_result", "point_id", "metric", "result_id", unique=True))


class RegressionDetection(Base):
    """A result of a sweep whose metric changed against its point's own history (``requestflow.results.
    regressions``): latency by a Mann-Whitney U test on the raw samples with a minimum effect, top-1/top-5 by exact
    comparison. One row per result and metric, so detecting twice stores nothing new. Read it through the view
    ``regressions`` (board, model, backend... by name, and whether it is acknowledged)."""

    __tablename__ = "regression_detections"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    point_id: Mapped[int] = mapped_column(ForeignKey("points.id"), index=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), comment="the new result")
    metric: Mapped[str] = mapped_column(Text, comment="latency, top1 or top5")
    change: Mapped[str] = mapped_column(Text, comment="slower or faster (latency), lower or higher (accuracy)")
    baseline_result_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger),
                                                           comment="the earlier results of the point compared with")
    old_value: Mapped[float] = mapped_column(Float, comment="baseline: median seconds of the pooled samples, or top-k")
    new_value: Mapped[float] = mapped_column(Float)
    ratio: Mapped[float | None] = mapped_column(Float, comment="new_value / old_value")
    p_value: Mapped[float | None] = mapped_column(Float, comment="two-sided Mann-Whitney U; none for accuracy")
    n_old: Mapped[int | None] = mapped_column(Integer, comment="samples (latency) or images (accuracy) compared")
    n_new: Mapped[int | None] = mapped_column(Integer)
    alpha: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(
        Float, comment="the minimum relative effect applied: max(min_effect, the baseline's run-to-run spread)")
    detected_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ack_id: Mapped[int | None] = mapped_column(ForeignKey("regression_acks.id"), index=True)
    __table_args__ = (CheckConstraint(METRICS_CHECKED, name="metric_known"),
                      CheckConstraint("change IN ('slower', 'faster', 'lower', 'higher')", name="change_known"),
                      Index("ux_regression_detections_result_metric", "result_id", "metric", unique=True))
