-- Denormalised order lines: every lineitem with its order's customer and date, and its net
-- revenue. The big join of the pipeline, so it runs alone with all cores and a large lease.
-- spillway: class=heavy profile=L
SELECT
    l.l_orderkey,
    l.l_linenumber,
    o.o_custkey,
    o.o_orderdate,
    date_trunc('month', o.o_orderdate) AS order_month,
    l.l_partkey,
    l.l_suppkey,
    l.l_quantity,
    l.l_extendedprice * (1 - l.l_discount) AS net_revenue,
    l.l_returnflag,
    l.l_shipdate,
    l.l_receiptdate
FROM lineitem l
JOIN orders o ON l.l_orderkey = o.o_orderkey
