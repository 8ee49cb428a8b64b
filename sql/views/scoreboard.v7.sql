-- scoreboard, version 7 (issue #19): the latency statistics the runner computes. Version 6's columns and rows,
-- unchanged and in their order, then latency_p99_s (the performance table's p99), the 95% distribution-free
-- confidence intervals of the p50, p90 and p99 (latency_p50_ci_low_s ... latency_p99_ci_high_s: the order
-- statistics bounding each, requestflow.board.latency_stats; NULL where no order statistic bounds it) and
-- latency_p90_early_stopping_s, MLPerf LoadGen's early-stopping estimate of the p90 (NULL below its 64 runs).
-- They are read from the stored document (performance.latency): a document written in schema version 1 is stored
-- as written, so its rows have them NULL (its p90 and p99 columns come from the upgraded document, as before).
-- scoreboard, version 6 (issue #19): measured energy per inference beside the estimate. Version 5's columns and
-- rows, unchanged and in their order, then:
-- * energy_measured_j: joules per inference (one timed run of one batch) from the performance result's power meter
--   (document -> 'energy', schema version 2: requestflow.board.power), when its measurement is valid; NULL without a
--   meter or when it was not valid. energy_above_idle_j: the same above the board's idle power.
-- * energy_meter: the meter's kind (hwmon, rapl, command); energy_invalid_reason: why a meter's figure is not shown.
-- * energy_j: the measured figure where there is one, else the estimate energy_est_j (peak power x median latency,
--   an upper bound, which stays as it was); energy_source says which: 'measured' or 'estimated' (NULL: neither).
-- The table of migration 0013 holds these rows like version 5's (sql/migrations/scoreboard_table.py).
-- scoreboard, version 5 (issue #17): accuracy belongs to its image set, and every backend's variant has a label.
-- * One accuracy per (configuration, image set): version 4 kept the latest accuracy of a configuration
--   (accuracy_key) whatever its images, so a 20-image check replaced a 500-image figure (and became the reference of
--   other backends' 500-image rows). The accuracy rows are now the latest per accuracy_key AND dataset (the image
--   set: its file list's sha256); a performance point is shown once per image set its configuration was measured
--   on (its latency repeated beside each accuracy), and once with no accuracy when there is none.
-- * image_set: that dataset's sha256 (NULL without accuracy). largest_image_set: whether the row's image set is its
--   configuration's largest (most images, then the latest result): the page and `requestflow plot` show these rows
--   unless a dataset size is chosen. Rows without accuracy are their configuration's only row (true).
-- * tf's reference top-1 keeps its rule (the latest tf row of the same weights, precision, dataset and image
--   count): with every image set kept, it is now always from the same image set as the row it checks. Only tf
--   compiled as a graph is a reference: tf with XLA (jit_compile) is checked against it like any other backend.
-- * variant_label for every backend: armcl's as before (CL/NHWC/DEFAULT/NONE), with its conv methods file's hash
--   as requestflow.board.catalogue.variant_label gives it (/methods:1234abcd); tf's compiler, 'graph' or 'XLA'
--   (jit_compile); tflite's delegate ('XNNPACK' from 'default (XNNPACK)'); 'default' for an empty variant.
-- * The unique key of the materialized scoreboard is (point_id, image_set) (migration 0012).
-- Version 4 (the live definition, scoreboard_live; scoreboard is its materialized copy, migration 0004).
-- Version 3's rows and columns exactly, computed in seconds: every load REFRESHes the materialized scoreboard, and at
-- 50,000 configurations that took 42 s with version 3 (and version 2) against 1.4 s with version 1 on a quiet
-- machine (bench/bench_store.py, bench/README.md).
-- * reference_top1 by a window over the accuracy rows (first_value over the same weights, precision, dataset and
--   image count, tf rows first, latest first) instead of the tf_reference self-join: the planner, estimating one
--   row per join key, ran that join as a nested loop re-sorting the tf rows for every scoreboard row (quadratic).
-- * Each result document is read once: quality and the backend's notes (caveats) were taken from results.document
--   (TOASTed, a few kB) once per use, several times per row, the notes through a per-row lookup of both results;
--   they are now extracted beside the performance and accuracy rows, and caveats reads those.
-- Measured at 50,000 configurations on a busy machine (load 4-9, 2 cores), the REFRESH of version 3 against this:
-- 75.8 s and 3.5 s (revisions 0008 and 0009 back to back); 51.2 s and 3.6 s interleaved in one database, where the
-- window alone gave 4.7 s. The backend's notes in caveats are now explicitly in order (version 3's DISTINCT sorted
-- them as it happened); the rows are otherwise the same (tests/test_scoreboard_v4.py).
-- Version 3: version 2's rows and columns, plus the measurement's verdict (requestflow.board.quality), read from the
-- performance result's document (document -> 'performance' -> 'quality'):
-- * quality: 'VALID', 'FLAGGED', or NULL (no performance result, or a document written before the verdict existed).
-- * quality_reasons: why it is FLAGGED (text[]); empty when VALID, NULL when quality is NULL.
-- FLAGGED points stay on the scoreboard and take part in pareto_frontier (version 4): see migration 0008.
-- Version 2 (version 1's rows and columns, plus):
-- * variant_label: an armcl variant as target/layout/conv_method/tuner (CL/NHWC/DEFAULT/NONE); empty otherwise.
-- * Accuracy as a correctness check (the seed's): reference_top1 is tf's top-1 on the same weights (sha256), the
--   same precision, the same images (dataset and count), on any board; accuracy_delta = top1 - reference_top1;
--   accuracy_check is 'reference' for tf itself, 'ok', 'FLAGGED' when more than 1 point below tf, or NULL when
--   there is no tf reference (or no accuracy).
-- * caveats: what a reader must know before comparing the row: the board's own (boards.info -> caveats: e.g. a
--   reference board's published figures), the backend's notes from its result documents (a CL device that is
--   PoCL on the CPU behind the OpenCL shim; a NEON result not verified on this machine), the accuracy flag.
CREATE VIEW scoreboard_live AS
WITH latest AS (
    SELECT DISTINCT ON (r.point_id) r.id, r.point_id, r.sweep_id, r.started_at
    FROM results r
    WHERE r.status = 'ok'
    ORDER BY r.point_id, r.started_at DESC, r.id DESC
),
-- MATERIALIZED: computed once, so each document is read once (jsonb_to_record: both parts from one read); the
-- outer query would otherwise read r.document again for every use of quality and of the backend's notes.
perf AS MATERIALIZED (
    SELECT p.*, l.id AS result_id, l.sweep_id, l.started_at, f.min_s, f.median_s, f.p90_s, f.throughput_ips, f.p99_s,
           d.performance -> 'quality' AS quality, d.context -> 'backend' AS backend_context,
           d.energy,  -- version 6: the power meter's figures (schema version 2), when the board has a meter
           d.performance -> 'latency' AS latency_stats  -- version 7: percentiles' intervals (schema version 2)
    FROM points p
    JOIN latest l ON l.point_id = p.id
    JOIN performance f ON f.result_id = l.id
    JOIN results r ON r.id = l.id
    CROSS JOIN LATERAL jsonb_to_record(r.document) AS d(performance jsonb, context jsonb, energy jsonb)
    WHERE p.mode = 'performance'
),
-- The accuracy rows as version 3's acc; backend_context is computed below the DISTINCT ON's sort: once per row.
-- version 5: the latest per configuration AND image set (dataset), not per configuration
acc_latest AS (
    SELECT DISTINCT ON (p.accuracy_key, p.dataset_id) p.*, l.id AS result_id, l.sweep_id, l.started_at,
           a.top1, a.top5, a.n AS image_count, d.sha256 AS image_set,
           r.document -> 'context' -> 'backend' AS backend_context,
           -- version 5: the reference is tf compiled as a graph (an XLA tf row is checked against it, like others)
           p.backend = 'tf' AND p.variant ->> 'jit_compile' IS DISTINCT FROM 'true' AS is_reference
    FROM points p
    JOIN latest l ON l.point_id = p.id
    JOIN accuracy a ON a.result_id = l.id
    JOIN results r ON r.id = l.id
    JOIN datasets d ON d.id = p.dataset_id
    WHERE p.mode = 'accuracy'
    ORDER BY p.accuracy_key, p.dataset_id, l.started_at DESC, l.id DESC
),
-- tf's reference top-1 for each accuracy row: the latest tf row (started_at, then result id) of the same weights,
-- precision, dataset and image count, on any board; NULL when there is none (the columns are NOT NULL: no NULL
-- partition keys, which an equality join would not have matched).
acc AS (
    SELECT a.*,
           CASE WHEN first_value(a.is_reference) OVER same_images THEN first_value(a.top1) OVER same_images END
               AS reference_top1
    FROM acc_latest a
    WINDOW same_images AS (PARTITION BY a.weights_sha256, a.precision, a.dataset_id, a.image_count
                           ORDER BY a.is_reference DESC, a.started_at DESC, a.result_id DESC)
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
           perf.min_s, perf.median_s, perf.p90_s, perf.throughput_ips, perf.quality, perf.energy,
           perf.p99_s, perf.latency_stats,
           acc.top1, acc.top5, acc.image_count, acc.image_set, acc.started_at AS accuracy_started_at,
           acc.is_reference,
           acc.reference_top1,
           COALESCE(perf.sweep_id, acc.sweep_id) AS sweep_id,
           perf.result_id AS performance_result_id,
           acc.result_id AS accuracy_result_id,
           perf.backend_context AS performance_backend_context,
           acc.backend_context AS accuracy_backend_context
    FROM perf
    FULL JOIN acc ON acc.accuracy_key = perf.accuracy_key
),
checked AS (
    SELECT m.*,
           CASE WHEN m.top1 IS NULL THEN NULL
                WHEN m.is_reference THEN 'reference'
                WHEN m.reference_top1 IS NULL THEN NULL
                WHEN m.top1 < m.reference_top1 - 0.01 THEN 'FLAGGED'
                ELSE 'ok' END AS accuracy_check,
           -- the configuration's largest image set: per performance point (or, without one, per configuration)
           row_number() OVER (PARTITION BY m.accuracy_key, m.performance_point_id
                              ORDER BY m.image_count DESC NULLS LAST, m.accuracy_started_at DESC NULLS LAST,
                                       m.accuracy_result_id DESC NULLS LAST) = 1 AS largest_image_set
    FROM merged m
)
SELECT
    b.name AS board,
    m.backend,
    m.variant::text AS variant,
    CASE WHEN m.variant ? 'target' THEN concat_ws('/', m.variant->>'target', m.variant->>'layout',
                                                  m.variant->>'conv_method', m.variant->>'tuner',
                                                  'methods:' || left(m.variant->>'conv_methods_sha256', 8))
         WHEN m.variant ? 'jit_compile' THEN CASE WHEN (m.variant->>'jit_compile')::boolean THEN 'XLA'
                                                  ELSE 'graph' END
         WHEN m.variant ? 'delegate' THEN COALESCE(substring(m.variant->>'delegate' FROM '\(([^)]*)\)'),
                                                   m.variant->>'delegate')
         WHEN m.variant = '{}'::jsonb THEN 'default'
         ELSE '' END AS variant_label,
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
    m.quality ->> 'verdict' AS quality,
    CASE WHEN m.quality ? 'verdict'
         THEN ARRAY(SELECT jsonb_array_elements_text(COALESCE(m.quality -> 'reasons', '[]'::jsonb))) END
        AS quality_reasons,
    m.top1,
    m.top5,
    m.image_count,
    m.image_set,
    m.largest_image_set,
    m.reference_top1,
    m.top1 - m.reference_top1 AS accuracy_delta,
    m.accuracy_check,
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
    m.accuracy_result_id,
    ARRAY(SELECT c FROM (
        SELECT jsonb_array_elements_text(COALESCE(b.info->'caveats', '[]'::jsonb)) AS c
        UNION ALL
        -- the backend's notes from both documents (read once, above), in order
        (SELECT DISTINCT n
         FROM (VALUES (m.performance_backend_context->>'device_note'), (m.performance_backend_context->>'untested'),
                      (m.accuracy_backend_context->>'device_note'), (m.accuracy_backend_context->>'untested'))
              AS notes(n)
         WHERE n IS NOT NULL
         ORDER BY n)
        UNION ALL
        SELECT format('accuracy %s points below tf on the same weights (%s vs %s)',
                      round(((m.reference_top1 - m.top1) * 100)::numeric, 1), round(m.top1::numeric, 4),
                      round(m.reference_top1::numeric, 4))
        WHERE m.accuracy_check = 'FLAGGED'
    ) AS all_caveats) AS caveats,
    -- version 6: energy per inference measured by the board's power meter (a valid measurement only), beside the
    -- estimate above, which stays
    e.measured_j AS energy_measured_j,
    CASE WHEN e.valid THEN (m.energy ->> 'joules_per_inference_above_idle')::float8 END AS energy_above_idle_j,
    m.energy -> 'meter' ->> 'kind' AS energy_meter,
    CASE WHEN NOT e.valid THEN m.energy ->> 'reason' END AS energy_invalid_reason,
    COALESCE(e.measured_j, b.peak_power_w * m.median_s) AS energy_j,
    CASE WHEN e.measured_j IS NOT NULL THEN 'measured'
         WHEN b.peak_power_w * m.median_s IS NOT NULL THEN 'estimated' END AS energy_source,
    -- version 7: the p99, and the 95% distribution-free intervals of the p50, p90 and p99 and LoadGen's early-stopping
    -- p90 estimate as the runner wrote them (performance.latency; NULL where it bounds nothing, below LoadGen's
    -- minimum of runs, or in a document written before schema version 2, whose stored text has no such block)
    m.p99_s AS latency_p99_s,
    (m.latency_stats -> 'p50' -> 'ci_s' ->> 0)::float8 AS latency_p50_ci_low_s,
    (m.latency_stats -> 'p50' -> 'ci_s' ->> 1)::float8 AS latency_p50_ci_high_s,
    (m.latency_stats -> 'p90' -> 'ci_s' ->> 0)::float8 AS latency_p90_ci_low_s,
    (m.latency_stats -> 'p90' -> 'ci_s' ->> 1)::float8 AS latency_p90_ci_high_s,
    (m.latency_stats -> 'p99' -> 'ci_s' ->> 0)::float8 AS latency_p99_ci_low_s,
    (m.latency_stats -> 'p99' -> 'ci_s' ->> 1)::float8 AS latency_p99_ci_high_s,
    (m.latency_stats -> 'early_stopping' -> 'p90' ->> 'value')::float8 AS latency_p90_early_stopping_s
FROM checked m
CROSS JOIN LATERAL (SELECT (m.energy ->> 'valid')::boolean AS valid,
                           CASE WHEN (m.energy ->> 'valid')::boolean
                                THEN (m.energy ->> 'joules_per_inference')::float8 END AS measured_j) AS e
JOIN boards b ON b.id = m.board_id
JOIN library_builds lb ON lb.id = m.library_build_id
JOIN models mo ON mo.id = m.model_id
JOIN weights w ON w.sha256 = m.weights_sha256
LEFT JOIN sweeps s ON s.id = m.sweep_id;
