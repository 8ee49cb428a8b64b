-- scoreboard, version 1: one row per point, the latest successful result of each.
-- Performance and accuracy of the same configuration (same board, backend, variant, library build, model,
-- precision, weights and preprocessing: points.accuracy_key) are merged into one row; accuracy-only
-- configurations appear with empty latency columns.
-- energy_est_j is an UPPER BOUND: the board's peak power times the median latency (per batch).
-- cost_per_million_images_usd: board price / service life (seconds) x median seconds per image x 1e6.
CREATE VIEW scoreboard AS
WITH latest AS (
    SELECT DISTINCT ON (r.point_id) r.id, r.point_id, r.sweep_id, r.started_at
    FROM results r
    WHERE r.status = 'ok'
    ORDER BY r.point_id, r.started_at DESC, r.id DESC
),
perf AS (
    SELECT p.*, l.id AS result_id, l.sweep_id, l.started_at, f.min_s, f.median_s, f.p90_s, f.throughput_ips
    FROM points p
    JOIN latest l ON l.point_id = p.id
    JOIN performance f ON f.result_id = l.id
    WHERE p.mode = 'performance'
),
acc AS (
    SELECT DISTINCT ON (p.accuracy_key) p.*, l.id AS result_id, l.sweep_id, l.started_at,
           a.top1, a.top5, a.n AS image_count
    FROM points p
    JOIN latest l ON l.point_id = p.id
    JOIN accuracy a ON a.result_id = l.id
    WHERE p.mode = 'accuracy'
    ORDER BY p.accuracy_key, l.started_at DESC, l.id DESC
),
merged AS (
    SELECT COALESCE(perf.accuracy_key, acc.accuracy_key) AS accuracy_key,
           COALESCE(perf.point_id, acc.point_id) AS point_id,
           perf.point_id AS performance_point_id,
           acc.point_id AS accuracy_point_id,
           COALESCE(perf.board_id, acc.board_id) AS board_id,
           COALESCE(perf.library_build_id, acc.library_build_id) AS library_build_id,
           COALESCE(perf.model_id, acc.model_id) AS model_id,
           COALESCE(perf.weights_sha256, acc.weights_sha256) AS weights_sha256,
           COALESCE(perf.backend, acc.backend) AS backend,
           COALESCE(perf.variant, acc.variant) AS variant,
           COALESCE(perf.precision, acc.precision) AS precision,
           perf.batch_size, perf.threads, perf.cpu_affinity,
           perf.min_s, perf.median_s, perf.p90_s, perf.throughput_ips,
           acc.top1, acc.top5, acc.image_count,
           COALESCE(perf.sweep_id, acc.sweep_id) AS sweep_id,
           perf.result_id AS performance_result_id,
           acc.result_id AS accuracy_result_id
    FROM perf
    FULL JOIN acc ON acc.accuracy_key = perf.accuracy_key
)
SELECT
    b.name AS board,
    m.backend,
    m.variant::text AS variant,
    lb.library,
    lb.version AS library_version,
    m.model_id AS model,
    mo.width,
    mo.resolution,
    mo.macs,
    mo.params * CASE WHEN m.precision = 'fp32' THEN 4 ELSE 1 END AS model_size_bytes,
    m.precision,
    m.batch_size,
    m.threads,
    m.cpu_affinity,
    m.min_s AS latency_min_s,
    m.median_s AS latency_median_s,
    m.p90_s AS latency_p90_s,
    m.throughput_ips,
    m.top1,
    m.top5,
    m.image_count,
    b.peak_power_w * m.median_s AS energy_est_j,
    'upper bound: peak power x median latency'::text AS energy_kind,
    b.price_usd / (b.service_life_years * 365.25 * 86400) * (m.median_s / m.batch_size) * 1e6
        AS cost_per_million_images_usd,
    w.random AS random_weights,
    w.sha256 AS weights_sha256,
    s.run_id AS sweep,
    m.point_id AS point_id,
    m.performance_point_id,
    m.accuracy_point_id,
    m.performance_result_id,
    m.accuracy_result_id
FROM merged m
JOIN boards b ON b.id = m.board_id
JOIN library_builds lb ON lb.id = m.library_build_id
JOIN models mo ON mo.id = m.model_id
JOIN weights w ON w.sha256 = m.weights_sha256
LEFT JOIN sweeps s ON s.id = m.sweep_id;
