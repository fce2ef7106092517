-- Net revenue and order count by customer nation and month.
SELECT
    cn.region,
    cn.nation,
    ol.order_month,
    sum(ol.net_revenue) AS revenue,
    count(DISTINCT ol.l_orderkey) AS orders,
    count(*) AS lines
FROM order_lines ol
JOIN customer_nation cn ON cn.c_custkey = ol.o_custkey
GROUP BY cn.region, cn.nation, ol.order_month
ORDER BY cn.region, cn.nation, ol.order_month
