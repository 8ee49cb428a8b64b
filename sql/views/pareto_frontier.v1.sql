-- pareto_frontier, version 1: per board, the scoreboard rows that no other row of that board beats on both
-- median latency (lower is better) and top-1 (higher is better). A row is beaten when another is at least as
-- good on both and strictly better on one; rows equal on both are all kept. Random-weight rows and rows without
-- both figures take no part. Computed with two window maxima (O(n log n)), not a pairwise comparison:
--   best_faster   = best top-1 among rows strictly faster;
--   best_as_fast  = best top-1 among rows at most as slow (ties included).
-- A row is on the frontier when best_faster < its top-1 (or there is none) and best_as_fast = its top-1.
CREATE VIEW pareto_frontier AS
WITH candidates AS (
    SELECT s.*,
           max(s.top1) OVER (PARTITION BY s.board ORDER BY s.latency_median_s
                             RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW EXCLUDE GROUP) AS best_faster,
           max(s.top1) OVER (PARTITION BY s.board ORDER BY s.latency_median_s
                             RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS best_as_fast
    FROM scoreboard s
    WHERE NOT s.random_weights AND s.latency_median_s IS NOT NULL AND s.top1 IS NOT NULL
)
SELECT board, backend, variant, library, library_version, model, width, resolution, macs, model_size_bytes,
       precision, batch_size, threads, cpu_affinity, latency_min_s, latency_median_s, latency_p90_s, throughput_ips,
       top1, top5, image_count, energy_est_j, energy_kind, cost_per_million_images_usd, random_weights,
       weights_sha256, sweep, point_id, performance_point_id, accuracy_point_id, performance_result_id,
       accuracy_result_id
FROM candidates
WHERE (best_faster IS NULL OR best_faster < top1) AND best_as_fast = top1;
