-- regressions, version 1: one row per detected change of a point's metric (table regression_detections), with the
-- point's board, model, backend, variant... by name, the sweep of the new result and whether the change is
-- acknowledged (regression_acks). latency: old_value and new_value are median seconds (the baseline's pooled raw
-- samples and the new result's), p_value a two-sided Mann-Whitney U test; top1/top5: fractions, compared exactly.
-- Unacknowledged rows are what the regression_check DAG fails on: WHERE NOT acknowledged.
CREATE VIEW regressions AS
SELECT
    g.id,
    b.name AS board,
    p.model_id AS model,
    p.backend,
    p.variant::text AS variant,
    lb.library,
    lb.version AS library_version,
    p.precision,
    p.mode,
    p.batch_size,
    p.threads,
    p.cpu_affinity,
    g.metric,
    g.change,
    g.old_value,
    g.new_value,
    g.ratio,
    g.p_value,
    g.n_old,
    g.n_new,
    g.alpha,
    g.threshold,
    s.run_id AS sweep,
    r.started_at AS result_started_at,
    g.detected_at,
    g.ack_id IS NOT NULL AS acknowledged,
    a.reason AS ack_reason,
    a.acknowledged_by,
    a.acknowledged_at,
    p.point_id,
    g.result_id,
    g.baseline_result_ids
FROM regression_detections g
JOIN points p ON p.id = g.point_id
JOIN boards b ON b.id = p.board_id
JOIN library_builds lb ON lb.id = p.library_build_id
JOIN results r ON r.id = g.result_id
LEFT JOIN sweeps s ON s.id = r.sweep_id
LEFT JOIN regression_acks a ON a.id = g.ack_id;
