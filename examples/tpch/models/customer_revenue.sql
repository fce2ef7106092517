-- Lifetime revenue per customer: one row per customer who ordered. Kept as a Parquet
-- checkpoint because finance reads it too.
-- spillway: checkpoint=true
SELECT
    o_custkey,
    sum(net_revenue) AS revenue,
    count(DISTINCT l_orderkey) AS orders,
    min(o_orderdate) AS first_order,
    max(o_orderdate) AS last_order
FROM order_lines
GROUP BY o_custkey
