-- The hundred customers with the highest lifetime revenue.
-- spillway: profile=S
SELECT
    cn.c_name,
    cn.nation,
    cn.c_mktsegment,
    cr.revenue,
    cr.orders,
    cr.first_order,
    cr.last_order
FROM customer_revenue cr
JOIN customer_nation cn ON cn.c_custkey = cr.o_custkey
ORDER BY cr.revenue DESC, cn.c_name
LIMIT 100
