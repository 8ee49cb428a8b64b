-- energy_frontier, version 1 (issue #19): pareto_frontier (version 6) with energy per inference in place of median
-- latency. Per board, image set and energy_source, the scoreboard rows (version 6) that no other row beats on both
-- energy_j (lower is better) and top-1 (higher is better): measured joules are compared with measured joules only,
-- and estimates (peak power x median latency, an upper bound) with estimates, never one with the other. Random
-- weights, rows without both figures and emulated timings (quality 'EMULATED') take no part, as in pareto_frontier;
-- rows equal on both are all kept. The same running maximum over a GROUPS frame as pareto_frontier.
CREATE VIEW energy_frontier AS
WITH candidates AS (
    SELECT s.*,
           max(s.top1) OVER (PARTITION BY s.board, s.image_set, s.energy_source ORDER BY s.energy_j, s.top1 DESC
                             GROUPS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS best_before
    FROM scoreboard s
    WHERE NOT s.random_weights AND s.energy_j IS NOT NULL AND s.top1 IS NOT NULL
      AND s.quality IS DISTINCT FROM 'EMULATED'
)
SELECT board, energy_source, energy_j, energy_measured_j, energy_above_idle_j, energy_meter, energy_est_j,
       energy_kind, top1, top5, image_count, image_set, largest_image_set, backend, variant, variant_label, library,
       library_version, model, width, resolution, macs, model_size_bytes, precision, batch_size, threads,
       cpu_affinity, latency_min_s, latency_median_s, latency_p90_s, throughput_ips, quality, quality_reasons,
       reference_top1, accuracy_delta, accuracy_check, cost_per_million_images_usd, random_weights, weights_sha256,
       sweep, point_id, performance_point_id, accuracy_point_id, performance_result_id, accuracy_result_id, caveats
FROM candidates
WHERE best_before IS NULL OR best_before < top1;
