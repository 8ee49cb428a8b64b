-- pareto_frontier, version 7 (issue #19): the latency statistic is a column, not a hard-coded median. Every frontier
-- of version 6 is computed twice, once on the median latency and once on the p90 (a point with a long tail can be on
-- the first and not on the second), and each row says which: latency_stat ('median' or 'p90') and latency_s, the
-- value of that statistic. WHERE latency_stat = 'median' gives version 6's rows exactly (same rule, same columns
-- first); WHERE latency_stat = 'p90' the frontier on (latency_p90_s, top-1). A row without a p90 takes no part in
-- the p90 frontier, as one without a median takes none in the median's. New columns latency_stat and latency_s, last.
-- Each statistic is a branch of its own (UNION ALL) with the constant in its select list: a query choosing one
-- statistic reads one branch only, and the median's branch keeps the running maximum over its index
-- (ix_scoreboard_frontier); the p90's has its own (ix_scoreboard_frontier_p90, migration 0016).
-- Version 6: a frontier never mixes image sets. Scoreboard version 5 keeps one
-- accuracy per (configuration, image set), so a board's rows may carry top-1s measured on 20 and on 500 images:
-- rows are compared only with rows of the same board AND image set (scoreboard.image_set, the accuracy's dataset).
-- A configuration measured on two image sets can be on both frontiers. New columns image_set and largest_image_set.
-- Version 5: version 4 without emulated performance points (issue #15): a point timed under an emulator (quality
-- 'EMULATED') never sits on a frontier. Version 4: version 3 with quality and quality_reasons; FLAGGED points take
-- part like any other (migration 0008 says why). Version 3: version 2 with variant_label, reference_top1,
-- accuracy_delta, accuracy_check, caveats. Version 2: per board, the scoreboard rows that no other row of that
-- board beats on both latency (lower is better) and top-1 (higher is better). A row is beaten when another is at
-- least as good on both and strictly better on one; rows equal on both are all kept. Random-weight rows and rows
-- without both figures take no part.
-- Ordered by (latency, top-1 descending), the peer groups before a row are exactly the rows faster than it and
-- the rows as fast but more accurate: the row is on the frontier when the best top-1 among them is below its own.
-- One running maximum over a GROUPS frame (version 1 used EXCLUDE GROUP: 6.8 s instead of 0.6 s over 50,000 rows).
CREATE VIEW pareto_frontier AS
WITH candidates AS (
    SELECT s.*, 'median'::text AS latency_stat, s.latency_median_s AS latency_s,
           max(s.top1) OVER (PARTITION BY 'median'::text, s.board, s.image_set ORDER BY s.latency_median_s, s.top1 DESC
                             GROUPS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS best_before
    FROM scoreboard s
    WHERE NOT s.random_weights AND s.latency_median_s IS NOT NULL AND s.top1 IS NOT NULL
      AND s.quality IS DISTINCT FROM 'EMULATED'
    UNION ALL
    SELECT s.*, 'p90'::text AS latency_stat, s.latency_p90_s AS latency_s,
           max(s.top1) OVER (PARTITION BY 'p90'::text, s.board, s.image_set ORDER BY s.latency_p90_s, s.top1 DESC
                             GROUPS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS best_before
    FROM scoreboard s
    WHERE NOT s.random_weights AND s.latency_p90_s IS NOT NULL AND s.top1 IS NOT NULL
      AND s.quality IS DISTINCT FROM 'EMULATED'
)
SELECT board, backend, variant, variant_label, library, library_version, model, width, resolution, macs,
       model_size_bytes, precision, batch_size, threads, cpu_affinity, latency_min_s, latency_median_s,
       latency_p90_s, throughput_ips, quality, quality_reasons, top1, top5, image_count, image_set, largest_image_set,
       reference_top1,
       accuracy_delta, accuracy_check, energy_est_j, energy_kind, cost_per_million_images_usd, random_weights,
       weights_sha256, sweep, point_id, performance_point_id, accuracy_point_id, performance_result_id,
       accuracy_result_id, caveats, latency_stat, latency_s
FROM candidates
WHERE best_before IS NULL OR best_before < top1;
