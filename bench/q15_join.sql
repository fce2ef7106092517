-- TPC-H Q15 with its scalar subquery written as a join (issue #44's hang): a CollectLeft hash
-- join's dynamic filter below a spilling sort.
WITH revenue0 AS (
    SELECT l_suppkey AS supplier_no, sum(l_extendedprice * (1 - l_discount)) AS total_revenue
    FROM lineitem
    WHERE l_shipdate >= DATE '1996-01-01' AND l_shipdate < DATE '1996-01-01' + INTERVAL '3' MONTH
    GROUP BY l_suppkey),
top AS (SELECT max(total_revenue) AS m FROM revenue0)
SELECT s_suppkey, s_name, s_address, s_phone, total_revenue
FROM supplier JOIN revenue0 ON s_suppkey = supplier_no JOIN top ON total_revenue = top.m
ORDER BY s_suppkey
