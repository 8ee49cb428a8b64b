-- pareto_frontier, version 6 (issue #17): a frontier never mixes image sets. Scoreboard version 5 keeps one
-- accuracy per (configuration, image set), so a board's rows may carry top-1s measured on 20 and on 500 images:
-- rows are compared only with rows of the same board AND image set (scoreboard.image_set, the accuracy's dataset).
-- A configuration measured on two image sets can be on both frontiers. New columns image_set and largest_image_set.
-- Version 5: version 4 without emulated performance points (issue #15). A point whose latency
-- was timed under an emulator (quality 'EMULATED': qemu-user running arm64 code on an x86 host, say) has timings
-- that are the emulator's, not a measurement of any CPU: it never sits on a frontier, so it can neither beat nor
-- be beaten by a real board's measured points (the same board can hold both: this machine running its own tflite
-- and an emulated arm64 NEON program). Emulated accuracy stays on the scoreboard as the correctness check it is.
-- Version 4: version 3 with scoreboard v3's new columns (quality, quality_reasons). FLAGGED points
-- take part like any other: a verdict is a warning to read beside the figure, not a judgement of the configuration
-- (migration 0008 says why); adding WHERE quality IS DISTINCT FROM 'FLAGGED' lists the frontier's points whose
-- measurement passed every check.
-- Version 3: version 2 with scoreboard v2's new columns (variant_label, reference_top1, accuracy_delta,
-- accuracy_check, caveats). Version 2: per board, the scoreboard rows that no other row of that board beats on both
-- median latency (lower is better) and top-1 (higher is better). A row is beaten when another is at least as
-- good on both and strictly better on one; rows equal on both are all kept. Random-weight rows and rows without
-- both figures take no part.
-- Ordered by (latency, top-1 descending), the peer groups before a row are exactly the rows faster than it and
-- the rows as fast but more accurate: the row is on the frontier when the best top-1 among them is below its own.
-- One running maximum over a GROUPS frame (version 1 used EXCLUDE GROUP, which PostgreSQL recomputes for every
-- row: 6.8 s instead of 0.6 s over 50,000 rows, bench/bench_store.py).
CREATE VIEW pareto_frontier AS
WITH candidates AS (
    SELECT s.*,
           max(s.top1) OVER (PARTITION BY s.board, s.image_set ORDER BY s.latency_median_s, s.top1 DESC
                             GROUPS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS best_before
    FROM scoreboard s
    WHERE NOT s.random_weights AND s.latency_median_s IS NOT NULL AND s.top1 IS NOT NULL
      AND s.quality IS DISTINCT FROM 'EMULATED'
)
SELECT board, backend, variant, variant_label, library, library_version, model, width, resolution, macs,
       model_size_bytes, precision, batch_size, threads, cpu_affinity, latency_min_s, latency_median_s,
       latency_p90_s, throughput_ips, quality, quality_reasons, top1, top5, image_count, image_set, largest_image_set,
       reference_top1,
       accuracy_delta, accuracy_check, energy_est_j, energy_kind, cost_per_million_images_usd, random_weights,
       weights_sha256, sweep, point_id, performance_point_id, accuracy_point_id, performance_result_id,
       accuracy_result_id, caveats
FROM candidates
WHERE best_before IS NULL OR best_before < top1;
