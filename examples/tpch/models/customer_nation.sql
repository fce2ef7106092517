-- Customers with their nation and region (a small dimension).
-- spillway: profile=S
SELECT
    c.c_custkey,
    c.c_name,
    c.c_mktsegment,
    n.n_name AS nation,
    r.r_name AS region
FROM customer c
JOIN nation n ON n.n_nationkey = c.c_nationkey
JOIN region r ON r.r_regionkey = n.n_regionkey
